"""Streaming accumulators of the curvature of one block.

A block's per-example gradient is a matrix `g_i` of shape `(r, d)` (see docs/architecture.md);
a batch of them is `(b, r, d)`. `vec(g)` is the row-major flattening. For `n` training examples:

- GFIM: `G = (1 / (n r)) sum_i g_i^T g_i`, shape `(d, d)`;
- FIM: `F = (1 / n) sum_i vec(g_i) vec(g_i)^T`, shape `(r d, r d)`;
- damping: `lambda = c * mean_i ||g_i||_F^2 / (r d) = c * trace(G) / d = c * trace(F) / (r d)`.

The accumulators keep unnormalised sums, the sum of squared norms and `n`, so that merging the
accumulators of disjoint parts of a dataset gives the accumulator of the whole, and lambda
merges exactly. Influence scores built on these matrices follow the package's sign convention
(a large positive score means the training example is harmful); nothing here computes scores.
"""

import copy
import logging
from typing import ClassVar, Self

import torch
from torch import Tensor

from hyperinf.curvature._validation import (
    check_damping_scale,
    floating_dtype,
    non_negative_int,
    positive_int,
)
from hyperinf.curvature.errors import (
    BlockShapeError,
    EmptyCurvatureError,
    FIMTooLargeError,
    IncompatibleCurvatureError,
    NonFiniteGradientError,
)

logger = logging.getLogger(__name__)

DEFAULT_DAMPING_SCALE = 0.1
DEFAULT_MAX_FIM_DIM = 4096
KINDS = ("gfim", "fim")


class BlockAccumulator:
    """Common part of `GFIMAccumulator` and `FIMAccumulator`: one block, streaming.

    Attributes:
        r: Rows of the block gradient.
        d: Columns of the block gradient.
        dtype: Accumulation dtype (float64 by default; gradients are cast per batch).
        device: Device of the accumulated tensors.
        name: Block name, used in error messages and to refuse merging different blocks.
        n: Number of training examples accumulated.
        sq_norm_sum: `sum_i ||g_i||_F^2`, a 0-dim tensor of `dtype`.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        r: int,
        d: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        name: str = "",
    ) -> None:
        self.r = positive_int(r, "r")
        self.d = positive_int(d, "d")
        self.dtype = floating_dtype(dtype)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.name = name
        self._check_size()

        size = self.matrix_dim
        self._sum = torch.zeros(size, size, dtype=self.dtype, device=self.device)
        self.sq_norm_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        self.n = 0

    @property
    def matrix_dim(self) -> int:
        """Side of the curvature matrix."""
        raise NotImplementedError("use GFIMAccumulator or FIMAccumulator")

    @property
    def label(self) -> str:
        """How error messages refer to this block."""
        return f"block {self.name!r}" if self.name else "block"

    def _check_size(self) -> None:
        """Refuses blocks too large for this kind of matrix; nothing to refuse by default."""

    def _rows(self, grads: Tensor) -> Tensor:
        """The matrix `X` with `X^T X` equal to this batch's contribution to the sum."""
        raise NotImplementedError("use GFIMAccumulator or FIMAccumulator")

    def _normaliser(self) -> int:
        raise NotImplementedError("use GFIMAccumulator or FIMAccumulator")

    def update(self, grads: Tensor, *, offset: int = 0) -> None:
        """Adds a batch of per-example block gradients.

        Args:
            grads: `(b, r, d)` gradients of `b` training examples, any floating dtype and
                device; cast to the accumulator's dtype and device. `b = 0` is a no-op.
            offset: Dataset index of the batch's first example, used in error messages.

        Raises:
            BlockShapeError: If `grads` is not `(b, r, d)` or not floating point.
            NonFiniteGradientError: If a gradient contains inf or NaN; names the dataset
                index (`offset` plus batch index) of the first bad example. Nothing is added.
        """
        self._check(grads, offset=offset)
        self._accumulate(self._cast(grads))

    def _check(self, grads: Tensor, *, offset: int = 0) -> None:
        """Validates a batch without changing any state."""
        if not isinstance(grads, Tensor):
            raise TypeError(f"{self.label}: grads must be a torch.Tensor, got {type(grads)}")
        offset = non_negative_int(offset, "offset")
        if grads.ndim != 3 or tuple(grads.shape[1:]) != (self.r, self.d):
            raise BlockShapeError(
                f"{self.label}: expected gradients of shape (b, {self.r}, {self.d}), "
                f"got {tuple(grads.shape)}"
            )
        if not grads.is_floating_point():
            raise BlockShapeError(
                f"{self.label}: gradients must be real floating point, got {grads.dtype}"
            )

        # Judge finiteness in the accumulation precision: a float64 gradient may overflow
        # a float32 accumulator.
        narrows = torch.finfo(grads.dtype).max > torch.finfo(self.dtype).max
        values = grads.detach().to(self.dtype) if narrows else grads.detach()
        finite = torch.isfinite(values).flatten(1).all(dim=1)
        if not bool(finite.all()):
            batch_index = int((~finite).nonzero()[0, 0])
            index = offset + batch_index
            raise NonFiniteGradientError(
                f"{self.label}: the gradient of training example {index} (index {batch_index} "
                f"of the batch starting at {offset}) contains inf or NaN",
                block=self.name,
                index=index,
            )

    def _cast(self, grads: Tensor) -> Tensor:
        return grads.detach().to(device=self.device, dtype=self.dtype)

    def _accumulate(self, grads: Tensor) -> None:
        """Adds a checked batch already cast to this accumulator's dtype and device."""
        rows = self._rows(grads)
        self._sum.addmm_(rows.mT, rows)
        # Out of place: a loaded set's accumulators must never share this tensor.
        self.sq_norm_sum = self.sq_norm_sum + grads.square().sum()
        self.n += grads.shape[0]

    def merge(self, other: Self) -> Self:
        """Returns the accumulator of the union of both accumulators' training examples.

        Neither input changes. `other` may live on another device; the result lives on this
        accumulator's device.

        Raises:
            IncompatibleCurvatureError: If `other` is another kind, block, shape or dtype.
        """
        self._check_compatible(other)
        merged = copy.copy(self)
        merged._sum = self._sum + other._sum.to(self.device)
        merged.sq_norm_sum = self.sq_norm_sum + other.sq_norm_sum.to(self.device)
        merged.n = self.n + other.n
        return merged

    def _check_compatible(self, other: object) -> None:
        if type(other) is not type(self):
            raise IncompatibleCurvatureError(
                f"{self.label}: cannot merge a {type(self).__name__} with {type(other).__name__}"
            )
        mine = (self.name, self.r, self.d, self.dtype)
        theirs = (other.name, other.r, other.d, other.dtype)
        if mine != theirs:
            raise IncompatibleCurvatureError(
                f"cannot merge accumulators of different blocks: (name, r, d, dtype) "
                f"{mine} against {theirs}"
            )

    def _require_examples(self) -> None:
        if self.n == 0:
            raise EmptyCurvatureError(
                f"{self.label}: no training example accumulated yet; call update() first"
            )

    def matrix(self) -> Tensor:
        """The normalised curvature matrix, exactly symmetric, a new tensor.

        Raises:
            EmptyCurvatureError: If no training example was accumulated.
        """
        self._require_examples()
        # The batched matmul leaves rounding-level asymmetry; solvers expect symmetry.
        return self._sum.add(self._sum.mT).mul_(0.5 / self._normaliser())

    def damping(self, c: float = DEFAULT_DAMPING_SCALE) -> float:
        """The damping `lambda = c * mean_i ||g_i||_F^2 / (r d)`.

        Args:
            c: Damping scale, finite and > 0.

        Raises:
            ValueError: If `c` is not finite and > 0.
            EmptyCurvatureError: If no training example was accumulated.
        """
        c = check_damping_scale(c)
        self._require_examples()
        lam = c * float(self.sq_norm_sum) / (self.n * self.r * self.d)
        if lam == 0.0:
            logger.warning("%s: every gradient is zero, so the damping is zero", self.label)
        return lam

    def damped(self, c: float = DEFAULT_DAMPING_SCALE) -> Tensor:
        """The damped matrix `M + lambda I`, with `M = matrix()` and `lambda = damping(c)`."""
        mat = self.matrix()
        mat.diagonal().add_(self.damping(c))
        return mat

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, r={self.r}, d={self.d}, n={self.n}, "
            f"dtype={self.dtype}, device={self.device})"
        )


class GFIMAccumulator(BlockAccumulator):
    """Streaming GFIM of one block: `G = (1 / (n r)) sum_i g_i^T g_i`, shape `(d, d)`.

    The GFIM assumes the `r` rows of `g_i` are i.i.d., so that `F ~ I_r (x) G`.
    See `BlockAccumulator` for the interface.
    """

    kind: ClassVar[str] = "gfim"

    @property
    def matrix_dim(self) -> int:
        """Side `d` of the GFIM."""
        return self.d

    def _rows(self, grads: Tensor) -> Tensor:
        # Stacking every row of every example: X^T X = sum_i g_i^T g_i.
        return grads.reshape(-1, self.d)

    def _normaliser(self) -> int:
        return self.n * self.r


class FIMAccumulator(BlockAccumulator):
    """Streaming full FIM of one block: `F = (1 / n) sum_i vec(g_i) vec(g_i)^T`, `(r d, r d)`.

    `vec` is row-major. Only for small blocks: its memory is `(r d)^2`.
    See `BlockAccumulator` for the interface.

    Args:
        max_fim_dim: Largest accepted `r d`.

    Raises:
        FIMTooLargeError: If `r d > max_fim_dim`.
    """

    kind: ClassVar[str] = "fim"

    def __init__(
        self,
        r: int,
        d: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        name: str = "",
        max_fim_dim: int = DEFAULT_MAX_FIM_DIM,
    ) -> None:
        self.max_fim_dim = positive_int(max_fim_dim, "max_fim_dim")
        super().__init__(r, d, dtype=dtype, device=device, name=name)

    @property
    def matrix_dim(self) -> int:
        """Side `r d` of the FIM."""
        return self.r * self.d

    def _check_size(self) -> None:
        if self.r * self.d > self.max_fim_dim:
            raise FIMTooLargeError(
                f"{self.label} has r*d = {self.r}*{self.d} = {self.r * self.d} > max_fim_dim = "
                f"{self.max_fim_dim}: its full FIM would be {self.r * self.d}^2 entries; "
                f"use the GFIM (kind 'gfim') for this block instead"
            )

    def _rows(self, grads: Tensor) -> Tensor:
        return grads.reshape(grads.shape[0], self.r * self.d)

    def _normaliser(self) -> int:
        return self.n


def make_accumulator(
    kind: str,
    r: int,
    d: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    name: str = "",
    max_fim_dim: int = DEFAULT_MAX_FIM_DIM,
) -> BlockAccumulator:
    """Builds an empty accumulator of `kind` ('gfim' or 'fim') for an `(r, d)` block.

    Raises:
        ValueError: If `kind` is unknown.
        FIMTooLargeError: If `kind` is 'fim' and `r d > max_fim_dim`.
    """
    if kind == "gfim":
        return GFIMAccumulator(r, d, dtype=dtype, device=device, name=name)
    if kind == "fim":
        return FIMAccumulator(
            r, d, dtype=dtype, device=device, name=name, max_fim_dim=max_fim_dim
        )
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def gfim_from_fim(fim: Tensor, r: int, d: int) -> Tensor:
    """The GFIM implied by a FIM: the average of its `r` diagonal `(d, d)` blocks.

    With row-major `vec`, row `k` of `g_i` occupies entries `k d .. (k + 1) d - 1`, so the
    `k`-th diagonal block of `F` is `(1 / n) sum_i g_i[k]^T g_i[k]` and their mean over `k` is
    `G = (1 / (n r)) sum_i g_i^T g_i`.

    Args:
        fim: `(..., r d, r d)` FIM (any leading batch dimensions).
        r: Rows of the block gradient.
        d: Columns of the block gradient.

    Returns:
        `(..., d, d)` GFIM.

    Raises:
        ValueError: If `r` or `d` is not a positive integer, or `fim` is not `(..., r d, r d)`.
    """
    r = positive_int(r, "r")
    d = positive_int(d, "d")
    if fim.ndim < 2 or tuple(fim.shape[-2:]) != (r * d, r * d):
        raise ValueError(
            f"fim must have shape (..., {r * d}, {r * d}) for r={r}, d={d}, "
            f"got {tuple(fim.shape)}"
        )
    blocks = fim.reshape(*fim.shape[:-2], r, d, r, d)
    return blocks.diagonal(dim1=-4, dim2=-2).mean(dim=-1)
