"""Exceptions of the gradient stage."""

from __future__ import annotations


class BatchError(ValueError):
    """A batch has the wrong structure: unsupported type, mismatched sizes, a missing key."""


class NonFiniteGradientError(ValueError):
    """A training example has a non-finite loss or block gradient.

    Attributes:
        index: Dataset index of the example (``offset`` + position in the batch).
        block: Name of the block whose gradient is non-finite, or ``None`` when the loss
            itself is non-finite.
    """

    def __init__(self, message: str, index: int, block: str | None) -> None:
        super().__init__(message)
        self.index = index
        self.block = block


class UnsupportedModelError(ValueError):
    """The hook backend cannot see every use of a block's weight in this model."""
