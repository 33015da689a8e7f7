"""DataInf's closed form: the average of per-example Sherman-Morrison inverses.

DataInf replaces ``(F + lambda I)^{-1}`` with ``(1/n) sum_i (g_i g_i^T + lambda I)^{-1}``, whose
action on a query ``v`` is, by Sherman-Morrison,

    h = (1 / (n lambda)) sum_i (v - c_i g_i),     c_i = <v, g_i> / (lambda + ||g_i||^2),

with inner products over the flattened block. It needs the per-example gradients, not a
matrix, and solves no linear system: its report has 0 iterations, a NaN residual and
``converged`` True. Sums are kept in float64 so that batches can be streamed and partial
accumulators merged without depending on the batch order beyond float64 rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hyperinf.linalg._checks import check_finite, check_float, first_bad
from hyperinf.linalg.report import SolverReport

__all__ = ["DataInfAccumulator", "datainf_solve"]


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class DataInfAccumulator:
    """Streams training gradients in batches into DataInf's preconditioned queries.

    Shapes: queries ``V`` are ``(*stack, m, *block)`` and every batch of training gradients is
    ``(*stack, b, *block)``, with the same ``stack`` and ``block`` dims; ``block_ndim`` says how
    many trailing dims form the block (default ``V.ndim - 1``: no stack dims, e.g. ``V``
    ``(m, r, d)`` with gradients ``(b, r, d)``, or ``(m, p)`` with ``(b, p)``).

    Args:
        V: query gradients.
        damping: ``lambda > 0``, a float or a tensor broadcastable to ``stack``.
        block_ndim: number of trailing block dims (1 or more).

    Raises:
        ValueError: bad ``V``, ``damping`` or ``block_ndim``.
    """

    def __init__(self, V: Tensor, damping: float | Tensor, *, block_ndim: int | None = None):
        check_float(V, "V")
        block_ndim = V.ndim - 1 if block_ndim is None else block_ndim
        if isinstance(block_ndim, bool) or not isinstance(block_ndim, int) or block_ndim < 1:
            raise ValueError(f"block_ndim: expected an integer >= 1, got {block_ndim!r}")
        if V.ndim < block_ndim + 1:
            raise ValueError(
                f"V: shape {tuple(V.shape)} has no query dim before {block_ndim} block dims"
            )
        stack_ndim = V.ndim - block_ndim - 1
        check_finite(V, "V", V.ndim - block_ndim)
        self._shape = V.shape
        self._dtype = V.dtype
        self._stack = V.shape[:stack_ndim]
        self._block = V.shape[stack_ndim + 1 :]
        acc = _acc_dtype(V.device)
        self._V = V.reshape(math.prod(self._stack), V.shape[stack_ndim], -1).to(acc)
        self._damping = self._check_damping(damping, V.device, acc)
        self._sum = torch.zeros_like(self._V)
        self.n = 0

    def _check_damping(self, damping: float | Tensor, device: torch.device, dtype) -> Tensor:
        lam = torch.as_tensor(damping, dtype=dtype, device=device)
        try:
            lam = lam.expand(self._stack).reshape(-1)
        except RuntimeError as err:
            raise ValueError(
                f"damping: shape {tuple(lam.shape)} does not broadcast to the stack "
                f"{tuple(self._stack)}"
            ) from err
        if not bool((torch.isfinite(lam) & (lam > 0)).all()):
            raise ValueError(f"damping: expected finite values > 0, got {damping!r}")
        return lam

    def update(self, grads: Tensor) -> DataInfAccumulator:
        """Add a batch of training gradients ``(*stack, b, *block)``; returns ``self``.

        Raises:
            ValueError: wrong shape, dtype or device, or non-finite entries.
        """
        check_float(grads, "grads")
        ns = len(self._stack)
        if (
            grads.ndim != len(self._shape)
            or grads.shape[:ns] != self._stack
            or grads.shape[ns + 1 :] != self._block
        ):
            raise ValueError(
                f"grads: shape {tuple(grads.shape)} does not match (*stack, b, *block) with "
                f"stack {tuple(self._stack)} and block {tuple(self._block)}"
            )
        if grads.device != self._V.device:
            raise ValueError(f"grads: device {grads.device} differs from V's {self._V.device}")
        self._check_finite(grads)

        G = grads.reshape(self._V.shape[0], grads.shape[ns], -1).to(self._V.dtype)
        coef = torch.matmul(self._V, G.mT)
        coef /= (self._damping[:, None] + (G * G).sum(-1))[:, None, :]
        self._sum += torch.matmul(coef, G)
        self.n += grads.shape[ns]
        return self

    def _check_finite(self, grads: Tensor) -> None:
        """Raise ValueError naming the first training example (counted over all updates)."""
        ns = len(self._stack)
        if grads.numel() == 0:
            return
        bad = ~torch.isfinite(grads).flatten(start_dim=ns + 1).all(-1)
        i = first_bad(bad.movedim(ns, 0))
        if i is not None:
            example = self.n + i // max(1, math.prod(self._stack))
            raise ValueError(f"grads: training example {example} has non-finite entries")

    def merge(self, other: DataInfAccumulator) -> DataInfAccumulator:
        """Add another accumulator's examples (same queries and damping); returns ``self``.

        Raises:
            ValueError: the two accumulators have different queries or damping.
        """
        same = (
            self._shape == other._shape
            and torch.equal(self._V, other._V)
            and torch.equal(self._damping, other._damping)
        )
        if not same:
            raise ValueError("other: accumulators differ in queries V or damping")
        self._sum += other._sum
        self.n += other.n
        return self

    def result(self) -> tuple[Tensor, SolverReport]:
        """``(H, report)``: ``H`` of ``V``'s shape and dtype, one report entry per stack entry.

        Raises:
            ValueError: no training gradients were added.
        """
        if self.n == 0:
            raise ValueError("grads: no training gradients were added (n = 0)")
        H = (self._V - self._sum / self.n) / self._damping[:, None, None]
        report = SolverReport(
            method="datainf",
            iterations=torch.zeros(self._stack, dtype=torch.int64),
            residual=torch.full(self._stack, math.nan, dtype=torch.float64),
            converged=torch.ones(self._stack, dtype=torch.bool),
            tol=math.nan,
            stalled=torch.zeros(self._stack, dtype=torch.bool),
            diverged=torch.zeros(self._stack, dtype=torch.bool),
        )
        return H.to(self._dtype).reshape(self._shape), report


def datainf_solve(
    V: Tensor, grads: Tensor, damping: float | Tensor, *, block_ndim: int | None = None
) -> tuple[Tensor, SolverReport]:
    """DataInf's preconditioned queries from in-memory training gradients.

    ``h = (1 / (n lambda)) sum_i (v - c_i g_i)``, ``c_i = <v, g_i> / (lambda + ||g_i||^2)``.

    Args:
        V: queries ``(m, r, d)`` or ``(m, p)`` (more generally ``(*stack, m, *block)``).
        grads: training gradients ``(n, r, d)`` / ``(n, p)`` (``(*stack, n, *block)``).
        damping: ``lambda > 0``.
        block_ndim: trailing block dims (default ``V.ndim - 1``); see ``DataInfAccumulator``.

    Returns:
        ``(H, report)``: ``H`` of ``V``'s shape; the report has iterations 0, residual NaN (no
        system is solved) and ``converged`` True.

    Raises:
        ValueError: bad shapes, dtypes, damping, or no training gradients.
    """
    return DataInfAccumulator(V, damping, block_ndim=block_ndim).update(grads).result()
