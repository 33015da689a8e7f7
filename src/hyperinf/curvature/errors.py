"""Exceptions of the curvature stage.

Every exception derives from `CurvatureError`, itself a `ValueError`, so a caller (the CLI)
can turn any of them into a one-line message. Messages name the block, the argument, the
example index or the file at fault.
"""


class CurvatureError(ValueError):
    """Base class of every error raised by `hyperinf.curvature` on bad input."""


class BlockShapeError(CurvatureError):
    """A batch of block gradients has the wrong shape or dtype."""


class BlockNameError(CurvatureError, KeyError):
    """A block name is missing, unexpected or unknown.

    Also a `KeyError`, so that a lookup of an unknown block behaves like a mapping lookup.
    """

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class NonFiniteGradientError(CurvatureError):
    """A training example's gradient contains inf or NaN.

    Attributes:
        block: Name of the block whose gradient is not finite.
        index: Dataset index of the first bad training example (batch index plus offset).
    """

    def __init__(self, message: str, *, block: str, index: int) -> None:
        super().__init__(message)
        self.block = block
        self.index = index


class FIMTooLargeError(CurvatureError):
    """The full FIM of a block was requested but the block exceeds `max_fim_dim`."""


class EmptyCurvatureError(CurvatureError):
    """A curvature matrix or damping was requested before any training example was seen."""


class IncompatibleCurvatureError(CurvatureError):
    """Two accumulators or curvature sets that describe different blocks cannot be merged."""


class CurvatureFileError(CurvatureError):
    """A file is not a curvature file, has an unknown format version or is inconsistent."""
