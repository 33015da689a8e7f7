"""Per-example gradients of the blocks of a model.

Gradients are taken at the model's current weights in eval mode (no dropout). The model is
left as it was: its train/eval mode is restored, no ``.grad`` is written, no
``requires_grad`` flag changes and no hook is left behind, also when an error is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hyperinf.gradients.batches import Batch, check_batch, move_to
from hyperinf.gradients.blocks import Block
from hyperinf.gradients.errors import NonFiniteGradientError
from hyperinf.gradients.functional import func_gradients
from hyperinf.gradients.hooks import LossFn, hook_gradients
from hyperinf.gradients.losses import default_loss

logger = logging.getLogger(__name__)

BACKENDS = ("hooks", "func")


def per_example_gradients(
    model: nn.Module,
    batch: Batch,
    blocks: Sequence[Block],
    loss_fn: LossFn | None = None,
    *,
    backend: str = "hooks",
    offset: int = 0,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example gradients of the per-example losses with respect to each block.

    Args:
        model: The fine-tuned model.
        batch: A dict of tensors or an ``(inputs, targets)`` pair of ``b`` examples; moved to
            the device of the blocks' weights.
        blocks: Blocks from :func:`~hyperinf.gradients.blocks.find_blocks`.
        loss_fn: ``loss_fn(model, batch) -> (b,)`` per-example losses;
            :func:`~hyperinf.gradients.losses.default_loss` when ``None``.
        backend: ``"hooks"`` (one batched backward; the weights must be used through their
            ``nn.Linear`` modules' forward) or ``"func"`` (``torch.func.vmap``; any use of the
            weights, slower).
        offset: Dataset index of the batch's first example, used in error messages.

    Returns:
        ``(grads, losses)``: ``grads[block.name]`` is a float32 tensor ``(b, r, d)`` in the
        block layout (LoRA B transposed); ``losses`` is ``(b,)``, detached.

    Raises:
        ValueError: Unknown backend or a block that is not a trainable ``nn.Linear`` weight.
        BatchError: The batch's structure is wrong.
        NonFiniteGradientError: A loss or gradient is NaN or infinite; names the dataset
            index and the block.
        UnsupportedModelError: The hook backend cannot see every use of a weight.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not blocks:
        raise ValueError("blocks is empty: pass the blocks of find_blocks(model)")
    weights = _block_weights(model, blocks)
    check_batch(batch)
    batch = move_to(batch, weights[0].device)

    compute = hook_gradients if backend == "hooks" else func_gradients
    with _eval_mode(model), torch.enable_grad():
        grads, losses = compute(model, batch, blocks, loss_fn or default_loss)

    _check_finite(grads, losses, offset)
    return grads, losses


def _block_weights(model: nn.Module, blocks: Sequence[Block]) -> list[Tensor]:
    weights = []
    for block in blocks:
        try:
            module = model.get_submodule(block.module_name)
        except AttributeError as error:
            raise ValueError(f"block {block.name}: the model has no module "
                             f"{block.module_name!r}") from error
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            raise ValueError(f"block {block.name}: {block.module_name!r} is not an nn.Linear "
                             "whose weight requires grad")
        weights.append(module.weight)
    return weights


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_finite(grads: dict[str, Tensor], losses: Tensor, offset: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if bad.numel():
        position = int(bad[0])
        raise NonFiniteGradientError(
            f"training example {offset + position}: loss is {float(losses[position])} "
            "(check its inputs; with causal_lm_loss, an example whose labels are all -100 "
            "has no target tokens)",
            index=offset + position,
            block=None,
        )
    for name, grad in grads.items():
        bad = (~torch.isfinite(grad.flatten(1)).all(dim=1)).nonzero()
        if bad.numel():
            position = int(bad[0])
            raise NonFiniteGradientError(
                f"training example {offset + position}: the gradient of block {name} is not "
                "finite",
                index=offset + position,
                block=name,
            )
