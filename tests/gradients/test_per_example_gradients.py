import pytest
import torch
import torch.nn.functional as F
from gradient_models import (
    VOCAB,
    assert_gradients_close,
    classification_batch,
    hf_example_loss,
    instruction_batch,
    mlp_batch,
    mlp_example_loss,
    reference_gradients,
)
from torch import nn

from hyperinf.gradients import (
    BatchError,
    Block,
    NonFiniteGradientError,
    UnsupportedModelError,
    causal_lm_loss,
    cross_entropy_loss,
    find_blocks,
    per_example_gradients,
)

BACKENDS = ["hooks", "func"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padded", [True, False])
def test_bert_lora_matches_loop(bert, padded, backend):
    batch = classification_batch(padded)
    blocks = find_blocks(bert)
    expected = reference_gradients(bert, batch, blocks, hf_example_loss)
    bert.train()  # dropout is on: the gradients must still be the eval-mode ones

    grads, losses = per_example_gradients(bert, batch, blocks, cross_entropy_loss,
                                          backend=backend)

    assert_gradients_close(grads, expected)
    with torch.no_grad():
        bert.eval()
        expected_losses = [hf_example_loss(bert, {k: v[i:i + 1] for k, v in batch.items()})
                           for i in range(4)]
    torch.testing.assert_close(losses, torch.stack(expected_losses), rtol=1e-5, atol=1e-6)
    assert not losses.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_llama_lora_causal_lm_matches_loop(llama, backend):
    batch = instruction_batch()
    blocks = find_blocks(llama)
    expected = reference_gradients(llama, batch, blocks, hf_example_loss)

    grads, _ = per_example_gradients(llama, batch, blocks, causal_lm_loss, backend=backend)

    assert_gradients_close(grads, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_dense_tuple_batch_matches_loop(mlp, backend):
    batch = mlp_batch()
    blocks = find_blocks(mlp)
    expected = reference_gradients(mlp, batch, blocks, mlp_example_loss)

    grads, losses = per_example_gradients(mlp, batch, blocks, backend=backend)

    assert_gradients_close(grads, expected)
    x, y = batch
    torch.testing.assert_close(losses, F.cross_entropy(mlp(x), y, reduction="none"))


def test_three_dimensional_inputs_are_summed_over_positions(mlp):
    torch.manual_seed(4)
    batch = (torch.randn(3, 2, 4, 5), torch.tensor([0, 1, 2]))

    def pooled_loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(x).mean(dim=(1, 2)), y, reduction="none")

    blocks = find_blocks(mlp)
    expected = reference_gradients(mlp, batch, blocks, lambda m, ex: pooled_loss(m, ex)[0])

    grads, _ = per_example_gradients(mlp, batch, blocks, pooled_loss)

    assert_gradients_close(grads, expected)


class TiedMLP(nn.Module):
    """Uses its first layer's weight a second time outside that layer's forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        hidden = torch.tanh(self.first(x))
        return self.head(F.linear(hidden, self.first.weight))


def test_tied_weight_hooks_refuse_and_func_is_right():
    model = TiedMLP()
    batch = mlp_batch()
    blocks = find_blocks(model)
    expected = reference_gradients(model, batch, blocks, mlp_example_loss)

    with pytest.raises(UnsupportedModelError, match="first.weight.*backend='func'"):
        per_example_gradients(model, batch, blocks)
    grads, _ = per_example_gradients(model, batch, blocks, backend="func")

    assert_gradients_close(grads, expected)


def _snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "values": [p.detach().clone() for p in model.parameters()],
    }


def _assert_unchanged(model, before):
    assert [m.training for m in model.modules()] == before["training"]
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    for param, value in zip(model.parameters(), before["values"]):
        assert param.grad is None
        assert torch.equal(param.detach(), value)
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_unchanged(bert, backend):
    bert.train()
    bert.base_model.model.bert.embeddings.eval()  # a mixed mode must come back as it was
    before = _snapshot(bert)

    per_example_gradients(bert, classification_batch(True), find_blocks(bert), backend=backend)

    _assert_unchanged(bert, before)


def test_model_unchanged_after_error(bert):
    bert.train()
    before = _snapshot(bert)

    def failing_loss(model, batch):
        cross_entropy_loss(model, batch)
        raise RuntimeError("loss failed after the forward")

    with pytest.raises(RuntimeError, match="loss failed"):
        per_example_gradients(bert, classification_batch(True), find_blocks(bert), failing_loss)

    _assert_unchanged(bert, before)


def test_nan_input_names_dataset_index(mlp):
    x, y = mlp_batch()
    x[2, 1] = float("nan")
    before = _snapshot(mlp)

    with pytest.raises(NonFiniteGradientError, match="training example 12: loss is nan") as info:
        per_example_gradients(mlp, (x, y), find_blocks(mlp), offset=10)

    assert (info.value.index, info.value.block) == (12, None)
    _assert_unchanged(mlp, before)


def test_non_finite_gradient_with_finite_loss_names_index_and_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 1, bias=False))
    x = torch.randn(4, 5)
    x[3] = 0.0  # the output is 0 there, where sqrt has an infinite derivative

    def sqrt_loss(model, batch):
        inputs, _ = batch
        return model(inputs).squeeze(1).abs().sqrt()

    with pytest.raises(NonFiniteGradientError, match="example 3: the gradient of block 0.weight"):
        per_example_gradients(model, (x, torch.zeros(4)), find_blocks(model), sqrt_loss)


def test_causal_lm_example_without_targets_is_reported(llama):
    batch = instruction_batch()
    batch["labels"][1] = -100

    with pytest.raises(NonFiniteGradientError, match="training example 1.*no target tokens"):
        per_example_gradients(llama, batch, find_blocks(llama), causal_lm_loss)


def test_mismatched_batches_raise_naming_the_key(bert, mlp):
    blocks = find_blocks(bert)
    batch = classification_batch(True)

    with pytest.raises(BatchError, match="'labels'.*batch size 2.*'input_ids'.* 4"):
        per_example_gradients(bert, {**batch, "labels": batch["labels"][:2]}, blocks)
    with pytest.raises(BatchError, match="no key 'labels'"):
        per_example_gradients(bert, {"input_ids": batch["input_ids"]}, blocks)
    with pytest.raises(BatchError, match="unsupported batch type str"):
        per_example_gradients(mlp, "not a batch", find_blocks(mlp))
    with pytest.raises(BatchError, match=r"batch\['input_ids'\] is a list"):
        per_example_gradients(bert, {**batch, "input_ids": [[1, 2]] * 4}, blocks)


def test_bad_arguments_raise(mlp, bert):
    blocks = find_blocks(mlp)
    with pytest.raises(ValueError, match="backend must be one of"):
        per_example_gradients(mlp, mlp_batch(), blocks, backend="jax")
    missing = Block("query.weight", "query", "dense", r=1, d=1, transposed=False)
    with pytest.raises(ValueError, match="block query.weight: the model has no module"):
        per_example_gradients(mlp, mlp_batch(), [missing])
    frozen = find_blocks(bert, include=["classifier"])[0]
    bert.base_model.model.classifier.modules_to_save.default.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="classifier.*not an nn.Linear whose weight requires"):
        per_example_gradients(bert, classification_batch(False), [frozen])
    with pytest.raises(ValueError, match=r"shape \(6,\), got \(\)"):
        per_example_gradients(mlp, mlp_batch(), blocks,
                              lambda model, batch: cross_entropy_loss(model, batch).sum())


class MeanOverAllPositions(nn.Module):
    """Pools over padding too: its losses depend on padding positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 6).requires_grad_(False)
        self.proj = nn.Linear(6, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.proj(self.embed(input_ids)).mean(dim=1)


def test_loss_depending_on_padding_is_refused():
    model = MeanOverAllPositions()
    with pytest.raises(UnsupportedModelError, match="proj.weight.*depends on padding"):
        per_example_gradients(model, classification_batch(True), find_blocks(model))


def test_func_without_a_float_mask_equivalent_raises():
    model = MaskMultiplier()
    with pytest.raises(NotImplementedError, match="backend='hooks'"):
        per_example_gradients(model, classification_batch(True), find_blocks(model),
                              backend="func")


class MaskMultiplier(MeanOverAllPositions):
    """Uses a 2-D mask as weights: no 4-D additive mask reproduces it."""

    def forward(self, input_ids, attention_mask=None):
        hidden = self.proj(self.embed(input_ids))
        return (hidden * attention_mask[..., None]).sum(dim=1)


@pytest.mark.parametrize(("model_name", "kind"), [("bert", "encoder"), ("llama", "causal")])
def test_func_picks_the_mask_form_of_the_model(model_name, kind, request, caplog):
    model = request.getfixturevalue(model_name)
    batch = classification_batch(True) if model_name == "bert" else instruction_batch()
    with caplog.at_level("DEBUG", logger="hyperinf.gradients.functional"):
        per_example_gradients(model, batch, find_blocks(model)[:2], backend="func")
    assert f"using the {kind} 4-D float attention mask" in caplog.text
