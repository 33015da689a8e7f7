"""The func backend: ``torch.func.vmap`` over ``grad`` of a single example's loss.

It differentiates the block weights wherever they are used (tied weights, functional use),
at the cost of running the model once per example under ``vmap``.

Hugging Face models branch on the contents of a 2-D ``attention_mask``, which ``vmap``
cannot trace, so a padded batch's mask is replaced by an equivalent 4-D additive float
mask: ``(b, 1, 1, T)`` for encoders, ``(b, 1, T, T)`` with the causal triangle for decoders.
Which of the two the model needs is decided by comparing the model's logits under each
with its logits under the 2-D mask; boolean 4-D masks are never used, because eager
attention gives wrong gradients with them under ``vmap``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from hyperinf.gradients.batches import Batch
from hyperinf.gradients.blocks import Block
from hyperinf.gradients.losses import logits_of

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Batch], Tensor]

_MASK_RTOL = 1e-4


class _FunctionalModel:
    """Calls a model with substituted parameters; other attributes come from the model."""

    def __init__(self, model: nn.Module, tensors: dict[str, Tensor]) -> None:
        self._model = model
        self._tensors = tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._model, self._tensors, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def func_gradients(
    model: nn.Module, batch: Batch, blocks: Sequence[Block], loss_fn: LossFn
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example block gradients by ``vmap(grad_and_value(loss of one example))``.

    Args:
        model: The model, already in eval mode.
        batch: A checked batch of ``b`` examples on the model's device.
        blocks: The blocks to differentiate.
        loss_fn: Returns per-example losses ``(b,)``; called on sub-batches of size 1.

    Returns:
        ``({block name: (b, r, d) float32}, losses (b,) detached)``.

    Raises:
        NotImplementedError: A padded dict batch whose 2-D attention mask has no 4-D float
            equivalent that reproduces the model's logits.
    """
    batch = _vmappable_batch(model, batch)
    block_weights = {
        block.name: model.get_submodule(block.module_name).weight.detach() for block in blocks
    }
    others = {
        name: tensor.detach()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if name not in block_weights
    }

    def example_loss(weights: dict[str, Tensor], example: Batch) -> Tensor:
        functional_model = _FunctionalModel(model, {**others, **weights})
        return loss_fn(functional_model, _unsqueeze(example)).squeeze(0)

    weight_grads, losses = vmap(grad_and_value(example_loss), in_dims=(None, 0))(
        block_weights, batch
    )
    grads = {}
    for block in blocks:
        grad = weight_grads[block.name].float()
        grads[block.name] = grad.transpose(1, 2).contiguous() if block.transposed else grad
    return grads, losses.detach()


def _unsqueeze(example: Batch) -> Batch:
    if isinstance(example, Mapping):
        return {k: v.unsqueeze(0) for k, v in example.items()}
    return type(example)(v.unsqueeze(0) for v in example)


def _vmappable_batch(model: nn.Module, batch: Batch) -> Batch:
    if not isinstance(batch, Mapping):
        return batch
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    if bool(mask.ne(0).all()):
        # No padding: Hugging Face models treat a missing mask as all ones.
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return {**batch, "attention_mask": _equivalent_float_mask(model, batch, mask)}


def _equivalent_float_mask(model: nn.Module, batch: Batch, mask: Tensor) -> Tensor:
    dtype = _float_dtype(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    candidates = {"encoder": _encoder_mask(mask, dtype), "causal": _causal_mask(mask, dtype)}
    with torch.no_grad():
        reference = logits_of(model(**inputs))
        for kind, candidate in candidates.items():
            try:
                logits = logits_of(model(**{**inputs, "attention_mask": candidate}))
            except (RuntimeError, ValueError, TypeError, IndexError):
                logger.debug("func backend: the model rejects a %s 4-D mask", kind)
                continue
            if _same_at_tokens(reference, logits, mask):
                logger.debug("func backend: using the %s 4-D float attention mask", kind)
                return candidate
    raise NotImplementedError(
        "backend='func' cannot reproduce this model's 2-D attention_mask with a 4-D additive "
        "float mask (neither the encoder nor the causal form gives the same logits). Use "
        "backend='hooks', pass unpadded batches (batch size 1 or equal lengths), or pass a "
        "4-D float attention_mask that the model accepts."
    )


def _float_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _encoder_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    keep = mask.ne(0)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def _causal_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    length = mask.shape[1]
    triangle = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    keep = triangle[None, None] & mask.ne(0)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def _same_at_tokens(reference: Tensor, logits: Tensor, mask: Tensor) -> bool:
    if reference.shape != logits.shape:
        return False
    if reference.dim() >= 3 and reference.shape[:2] == mask.shape:
        at_tokens = mask.ne(0)
        reference, logits = reference[at_tokens], logits[at_tokens]
    finfo = torch.finfo(reference.dtype)
    tolerance = max(_MASK_RTOL, 8 * finfo.eps) * reference.abs().max().clamp_min(finfo.tiny)
    return bool((reference - logits).abs().max() <= tolerance)
