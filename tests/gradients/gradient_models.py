"""Tiny models, batches and the slow reference: one backward() per example."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hyperinf.gradients import Block, select, trim_padding

VOCAB = 100
NUM_LABELS = 3


def tiny_bert(dropout: float = 0.1) -> nn.Module:
    """A random BERT classifier with LoRA (r=4) on query and value and a trainable head."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        num_labels=NUM_LABELS,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    lora = LoraConfig(
        r=4,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        lora_dropout=dropout,
        # Random B (peft's default is B = 0, which makes every A gradient zero).
        init_lora_weights=False,
    )
    return get_peft_model(BertForSequenceClassification(config), lora)


def tiny_llama() -> nn.Module:
    """A random Llama causal LM with LoRA (r=4) on q_proj and v_proj (v_proj: 32 -> 16)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(LlamaForCausalLM(config), lora)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, NUM_LABELS))


def classification_batch(padded: bool) -> dict[str, Tensor]:
    torch.manual_seed(1)
    lengths = [7, 4, 2, 6] if padded else [7, 7, 7, 7]
    input_ids = torch.randint(1, VOCAB, (len(lengths), 7))
    attention_mask = torch.zeros_like(input_ids)
    for i, length in enumerate(lengths):
        attention_mask[i, :length] = 1
    input_ids = input_ids * attention_mask
    labels = torch.tensor([0, 2, 1, 2])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def instruction_batch() -> dict[str, Tensor]:
    """Right-padded causal LM batch with prompt tokens and padding labelled -100."""
    torch.manual_seed(2)
    lengths, prompts = [8, 5, 6], [3, 2, 4]
    input_ids = torch.randint(1, VOCAB, (len(lengths), 8))
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (length, prompt) in enumerate(zip(lengths, prompts)):
        attention_mask[i, :length] = 1
        labels[i, prompt:length] = input_ids[i, prompt:length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def mlp_batch() -> tuple[Tensor, Tensor]:
    torch.manual_seed(3)
    return torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])


def hf_example_loss(model: nn.Module, example: dict[str, Tensor]) -> Tensor:
    """The model's own loss on one example, padding cut off."""
    return model(**trim_padding(example)).loss


def mlp_example_loss(model: nn.Module, example: tuple[Tensor, Tensor]) -> Tensor:
    x, y = example
    return F.cross_entropy(model(x), y)


def reference_gradients(model, batch, blocks: list[Block], example_loss) -> dict[str, Tensor]:
    """Per-example gradients by one backward() per example in eval mode, (b, r, d)."""
    was_training = model.training
    model.eval()
    params = dict(model.named_parameters())
    grads: dict[str, list[Tensor]] = {block.name: [] for block in blocks}
    n = batch[0].shape[0] if isinstance(batch, tuple) else batch["labels"].shape[0]
    for i in range(n):
        model.zero_grad(set_to_none=True)
        example_loss(model, select(batch, i)).backward()
        for block in blocks:
            grad = params[block.name].grad.detach().clone()
            grads[block.name].append(grad.T if block.transposed else grad)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: torch.stack(g) for name, g in grads.items()}


def assert_gradients_close(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        assert actual[name].dtype == torch.float32
        assert actual[name].shape == grad.shape, name
        scale = grad.abs().max()
        assert scale > 0, f"{name}: reference gradient is zero, the test cannot fail"
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
