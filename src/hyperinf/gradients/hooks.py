"""The hook backend: per-example gradients from one batched backward.

For a linear layer ``y = x W^T`` the weight gradient of example ``i`` is
``sum_t outer(dL_i/dy_it, x_it)`` over its sequence positions ``t``. Forward hooks save
``x``, tensor hooks on ``y`` save ``dL/dy``, and one backward of the sum of per-example
losses gives every example's ``dL_i/dy_i`` (examples do not interact in eval mode).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hyperinf.gradients.batches import Batch, batch_size
from hyperinf.gradients.blocks import Block
from hyperinf.gradients.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Batch], Tensor]

# Relative mismatch allowed between the sum of per-example gradients and autograd's batch
# gradient; a weight used outside its module's forward gives mismatches of order 1.
_COVERAGE_TOLERANCE = 1e-3


class _Recorder:
    """Saves the input and the output gradient of every call of one ``nn.Linear``."""

    def __init__(self) -> None:
        self.calls: list[list[Tensor | None]] = []

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        inputs = args[0] if args else kwargs["input"]
        call: list[Tensor | None] = [inputs.detach(), None]
        self.calls.append(call)

        def save_grad(grad: Tensor) -> None:
            call[1] = grad.detach()

        output.register_hook(save_grad)


def hook_gradients(
    model: nn.Module, batch: Batch, blocks: Sequence[Block], loss_fn: LossFn
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example block gradients by forward/tensor hooks and one batched backward.

    Args:
        model: The model, already in eval mode.
        batch: A checked batch of ``b`` examples on the model's device.
        blocks: The blocks to differentiate.
        loss_fn: Returns per-example losses ``(b,)``.

    Returns:
        ``({block name: (b, r, d) float32}, losses (b,) detached)``.

    Raises:
        UnsupportedModelError: A block's weight is used where its module's hooks do not see
            it (tied or functional use), or a module sees inputs without the batch dimension.
    """
    recorders = {block.name: _Recorder() for block in blocks}
    handles = [
        model.get_submodule(block.module_name).register_forward_hook(
            recorders[block.name], with_kwargs=True
        )
        for block in blocks
    ]
    try:
        losses = loss_fn(model, batch)
        b = _check_losses(losses, batch)
        weights = [model.get_submodule(block.module_name).weight for block in blocks]
        totals = torch.autograd.grad(losses.sum(), weights, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()

    mask = _attention_mask(batch)
    grads = {}
    for block, total in zip(blocks, totals):
        grads[block.name] = _block_gradient(block, recorders[block.name].calls, b, mask)
        _check_coverage(block, grads[block.name], total)
    return grads, losses.detach()


def _check_losses(losses: Tensor, batch: Batch) -> int:
    b = batch_size(batch)
    if not isinstance(losses, Tensor) or losses.shape != (b,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return per-example losses of shape ({b},), got {shape}")
    return b


def _attention_mask(batch: Batch) -> Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        # An all-ones mask masks nothing: skip the multiplications.
        if mask is not None and mask.dim() == 2 and not bool(mask.ne(0).all()):
            return mask
    return None


def _block_gradient(
    block: Block, calls: list[list[Tensor | None]], b: int, mask: Tensor | None
) -> Tensor:
    grad = None
    for inputs, output_grad in calls:
        if output_grad is None:
            # The call's output did not reach the loss.
            continue
        term = _call_gradient(block, inputs, output_grad, b, mask)
        grad = term if grad is None else grad + term
    if grad is None:
        logger.warning("block %s does not reach the loss; its gradient is zero", block.name)
        grad = torch.zeros(b, block.r, block.d)
    return grad


def _call_gradient(
    block: Block, inputs: Tensor, output_grad: Tensor, b: int, mask: Tensor | None
) -> Tensor:
    if inputs.shape[0] != b or output_grad.shape[0] != b:
        raise UnsupportedModelError(
            f"block {block.name}: module {block.module_name} received inputs of shape "
            f"{tuple(inputs.shape)} without the batch dimension {b}; use backend='func'"
        )
    inputs = inputs.float()
    output_grad = output_grad.float()
    if mask is not None and inputs.dim() == 3 and inputs.shape[:2] == mask.shape:
        inputs = inputs * mask.to(inputs.dtype).unsqueeze(-1)

    inputs = inputs.reshape(b, -1, inputs.shape[-1])
    output_grad = output_grad.reshape(b, -1, output_grad.shape[-1])
    if block.transposed:
        return torch.einsum("bti,bto->bio", inputs, output_grad)
    return torch.einsum("bto,bti->boi", output_grad, inputs)


def _check_coverage(block: Block, grads: Tensor, total: Tensor | None) -> None:
    if total is None:
        return
    total = total.float().to(grads.device)
    if block.transposed:
        total = total.T
    scale = grads.flatten(1).norm(dim=1).sum() + torch.finfo(torch.float32).tiny
    mismatch = float((grads.sum(dim=0) - total).norm() / scale)
    tolerance = max(_COVERAGE_TOLERANCE, 10 * torch.finfo(total.dtype).eps)
    if mismatch > tolerance:
        raise UnsupportedModelError(
            f"block {block.name}: per-example gradients from hooks do not add up to the batch "
            f"gradient (relative mismatch {mismatch:.2e}). The weight is used outside its "
            "module's forward (tied or functional use), or the loss depends on padding "
            "positions; use backend='func'"
        )
