import math

import pytest
import torch
from gradient_models import NUM_LABELS, VOCAB, classification_batch, instruction_batch
from torch import nn

from hyperinf.gradients import (
    BatchError,
    batch_size,
    causal_lm_loss,
    check_batch,
    cross_entropy_loss,
    default_loss,
    move_to,
    select,
    trim_padding,
)


def test_batch_size_and_select():
    batch = classification_batch(True)
    assert batch_size(batch) == 4
    assert batch_size((torch.zeros(3, 2), torch.zeros(3))) == 3

    one = select(batch, 2)
    assert one["input_ids"].shape == (1, 7)
    assert torch.equal(one["labels"], batch["labels"][2:3])
    some = select(batch, [3, 0])
    assert torch.equal(some["input_ids"], batch["input_ids"][[3, 0]])
    x, y = select((torch.arange(6.0).view(3, 2), torch.tensor([5, 6, 7])), slice(1, 3))
    assert torch.equal(y, torch.tensor([6, 7])) and x.shape == (2, 2)


def test_move_to_keeps_structure():
    moved = move_to([torch.zeros(2), torch.ones(2)], "cpu")
    assert isinstance(moved, list) and len(moved) == 2
    moved = move_to(classification_batch(False), torch.device("cpu"))
    assert set(moved) == {"input_ids", "attention_mask", "labels"}


def test_trim_padding_cuts_trailing_padding_only():
    batch = classification_batch(True)
    batch["attention_mask"][:, 6] = 0  # now the longest row has 6 tokens
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])

    trimmed = trim_padding(batch)

    assert trimmed["input_ids"].shape == (4, 6)
    assert trimmed["token_type_ids"].shape == (4, 6)
    assert torch.equal(trimmed["input_ids"], batch["input_ids"][:, :6])
    assert torch.equal(trimmed["labels"], batch["labels"])

    left_padded = {"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor(
        [[0, 0, 1, 1], [0, 1, 1, 1]])}
    assert trim_padding(left_padded)["input_ids"].shape == (2, 4)
    tuple_batch = (torch.zeros(2, 3), torch.zeros(2))
    assert trim_padding(tuple_batch) is tuple_batch


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"a": torch.zeros(3, 2), "b": torch.zeros(2)}, r"batch\['b'\] has batch size 2"),
        ({"a": torch.zeros(3), "b": 1.0}, r"batch\['b'\] is a float"),
        ({"a": torch.tensor(1.0)}, r"batch\['a'\] is a 0-d tensor"),
        ((torch.zeros(3, 2), torch.zeros(4)), r"batch\[1\] has batch size 4"),
        ((torch.zeros(3), torch.zeros(3), torch.zeros(3)), "must be \\(inputs, targets\\)"),
        ({}, "batch is empty"),
        (torch.zeros(3, 2), "unsupported batch type Tensor"),
    ],
)
def test_check_batch_errors(batch, message):
    with pytest.raises(BatchError, match=message):
        check_batch(batch)


def test_check_batch_required_key():
    with pytest.raises(BatchError, match="no key 'labels'"):
        check_batch({"input_ids": torch.zeros(2, 3)}, required_keys=("labels",))


class LogitsOnly(nn.Module):
    """A stand-in model returning fixed logits, to check losses against formulas."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids=None, attention_mask=None, x=None):
        return self.logits


def test_cross_entropy_loss_is_per_example_formula():
    torch.manual_seed(0)
    logits = torch.randn(4, NUM_LABELS)
    labels = torch.tensor([0, 2, 1, 1])
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "labels": labels}

    losses = cross_entropy_loss(LogitsOnly(logits), batch)

    expected = [-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(4)]
    torch.testing.assert_close(losses, torch.stack(expected))
    torch.testing.assert_close(default_loss(LogitsOnly(logits), batch), losses)
    tuple_losses = cross_entropy_loss(LogitsOnly(logits), (torch.zeros(4, 2), labels))
    torch.testing.assert_close(tuple_losses, losses)


def test_causal_lm_loss_shifts_and_masks():
    torch.manual_seed(0)
    batch = instruction_batch()
    logits = torch.randn(3, 8, VOCAB)

    losses = causal_lm_loss(LogitsOnly(logits), batch)

    labels = batch["labels"]
    for i in range(3):
        terms = [-torch.log_softmax(logits[i, t - 1], 0)[labels[i, t]]
                 for t in range(1, 8) if labels[i, t] != -100]
        assert len(terms) >= 2
        assert math.isclose(float(losses[i]), float(torch.stack(terms).mean()), rel_tol=1e-5)
    torch.testing.assert_close(default_loss(LogitsOnly(logits), batch), losses)


def test_causal_lm_loss_matches_model_loss(llama):
    batch = trim_padding(select(instruction_batch(), 0))
    with torch.no_grad():
        expected = llama(**batch).loss
        actual = causal_lm_loss(llama, batch)
    torch.testing.assert_close(actual, expected.view(1))


def test_causal_lm_loss_without_targets_is_nan():
    batch = instruction_batch()
    batch["labels"][0] = -100
    losses = causal_lm_loss(LogitsOnly(torch.zeros(3, 8, VOCAB)), batch)
    assert math.isnan(float(losses[0])) and torch.isfinite(losses[1:]).all()


def test_loss_shape_errors():
    with pytest.raises(BatchError, match=r"logits of shape \(b, C\).*causal_lm_loss"):
        cross_entropy_loss(LogitsOnly(torch.zeros(3, 8, VOCAB)), instruction_batch())
    with pytest.raises(BatchError, match="causal LM loss needs"):
        causal_lm_loss(LogitsOnly(torch.zeros(4, 3)), classification_batch(False))
    with pytest.raises(BatchError, match="labels of shape"):
        cross_entropy_loss(LogitsOnly(torch.zeros(4, 3)), (torch.zeros(4), torch.zeros(4, 2)))
