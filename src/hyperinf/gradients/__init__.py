"""The gradient stage: per-example gradients of a model's blocks in the ``(r, d)`` layout."""

from hyperinf.gradients.batches import (
    Batch,
    batch_size,
    check_batch,
    move_to,
    select,
    trim_padding,
)
from hyperinf.gradients.blocks import Block, find_blocks
from hyperinf.gradients.errors import BatchError, NonFiniteGradientError, UnsupportedModelError
from hyperinf.gradients.losses import causal_lm_loss, cross_entropy_loss, default_loss
from hyperinf.gradients.per_example import per_example_gradients

__all__ = [
    "Batch",
    "BatchError",
    "Block",
    "NonFiniteGradientError",
    "UnsupportedModelError",
    "batch_size",
    "causal_lm_loss",
    "check_batch",
    "cross_entropy_loss",
    "default_loss",
    "find_blocks",
    "move_to",
    "per_example_gradients",
    "select",
    "trim_padding",
]
