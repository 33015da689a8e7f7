"""What a solver did, per matrix of a stack: iterations, recomputed residual, and why it stopped.

Residuals are always recomputed from the returned result (in float64 where the device allows),
never copied from inside the iteration:

- inverse forms (``X`` approximates ``A^{-1}``, both ``(..., d, d)``):
  ``||I - A X||_F / sqrt(d)``, the root-mean-square eigenvalue of the residual matrix when
  ``X`` commutes with ``A``;
- solve forms (``X`` approximates ``V A^{-1}``, both ``(..., m, d)``):
  ``||V - X A||_F / ||V||_F`` per matrix, all ``m`` right-hand sides together (the absolute
  ``||X A||_F`` when ``V`` is zero).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ConvergenceWarning",
    "SolverReport",
    "inverse_residual",
    "residual_dtype",
    "solve_residual",
    "warn_on_failure",
]

# A stall floor above this is poor enough to warn about, not only log.
POOR_FLOOR = 1e-3


class ConvergenceWarning(RuntimeWarning):
    """A solver stopped without meeting its tolerance (cap hit, divergence, poor floor)."""


def residual_dtype(device: torch.device) -> torch.dtype:
    """The dtype residuals are recomputed in: float64, except on devices without it (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def inverse_residual(A: Tensor, X: Tensor) -> Tensor:
    """``||I - A X||_F / sqrt(d)`` per matrix.

    Args:
        A: ``(..., d, d)``.
        X: ``(..., d, d)``, an approximate inverse of ``A``.

    Returns:
        ``(...,)`` residuals in float64 (float32 on MPS).
    """
    dtype = residual_dtype(A.device)
    d = A.shape[-1]
    eye = torch.eye(d, dtype=dtype, device=A.device)
    R = eye - A.to(dtype) @ X.to(dtype)
    return torch.linalg.matrix_norm(R) / math.sqrt(d)


def solve_residual(A: Tensor, V: Tensor, X: Tensor) -> Tensor:
    """``||V - X A||_F / ||V||_F`` per matrix, all right-hand sides together.

    Args:
        A: ``(..., d, d)``.
        V: ``(..., m, d)``, leading dims broadcast with ``A``'s.
        X: ``(..., m, d)``, an approximation of ``V A^{-1}``.

    Returns:
        ``(...,)`` (the broadcast leading shape) residuals in float64 (float32 on MPS). Where
        ``||V||_F = 0`` the absolute residual ``||X A||_F`` is returned instead.
    """
    dtype = residual_dtype(A.device)
    V64 = V.to(dtype)
    num = torch.linalg.matrix_norm(V64 - X.to(dtype) @ A.to(dtype))
    den = torch.linalg.matrix_norm(V64)
    num, den = torch.broadcast_tensors(num, den)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), num)


def _to_python(values: Tensor) -> list[Any]:
    """A tensor as nested python lists, with NaN and infinities as None (strict JSON)."""
    if values.dtype.is_floating_point:
        return [None if not math.isfinite(x) else x for x in values.flatten().tolist()]
    return values.flatten().tolist()


@dataclass
class SolverReport:
    """Per-matrix outcome of one solver call on a stack of matrices of shape ``(..., d, d)``.

    All tensor fields have the stack's leading shape ``(...,)`` and live on the CPU.

    Attributes:
        method: ``"schulz"``, ``"cholesky"``, ``"cg"``, ``"lissa"`` or ``"datainf"``.
        iterations: int64, iterations done per matrix (0 for closed forms).
        residual: float64, the final residual recomputed from the returned result (see the
            module docstring for the definitions); NaN where no system is solved (DataInf).
        converged: bool, ``residual <= tol`` and finite (always True for DataInf).
        tol: the tolerance the residual was compared with.
        stalled: bool, stopped because the residual stopped improving (a rounding floor).
        diverged: bool, the residual became non-finite or grew past the solver's bound.
    """

    method: str
    iterations: Tensor
    residual: Tensor
    converged: Tensor
    tol: float
    stalled: Tensor
    diverged: Tensor

    def __post_init__(self) -> None:
        self.iterations = self.iterations.detach().to("cpu", torch.int64)
        self.residual = self.residual.detach().to("cpu", torch.float64)
        shape = self.residual.shape
        self.iterations = self.iterations.expand(shape).clone()
        for name in ("converged", "stalled", "diverged"):
            flag = getattr(self, name).detach().to("cpu", torch.bool).expand(shape).clone()
            setattr(self, name, flag)

    @classmethod
    def from_residual(
        cls,
        method: str,
        residual: Tensor,
        tol: float,
        iterations: Tensor | int = 0,
        stalled: Tensor | bool = False,
        diverged: Tensor | bool = False,
    ) -> SolverReport:
        """Build a report whose ``converged`` flag is derived from ``residual <= tol``."""
        residual = residual.detach().to("cpu", torch.float64)
        converged = torch.isfinite(residual) & (residual <= tol)
        return cls(
            method=method,
            iterations=torch.as_tensor(iterations),
            residual=residual,
            converged=converged,
            tol=float(tol),
            stalled=torch.as_tensor(stalled),
            diverged=torch.as_tensor(diverged),
        )

    @property
    def shape(self) -> torch.Size:
        """The stack's leading shape."""
        return self.residual.shape

    def __len__(self) -> int:
        return self.residual.numel()

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The outcome of matrix ``index`` of the flattened (row-major) stack, as a dict."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"report index {index} out of range for {n} matrices")
        res = float(self.residual.flatten()[index])
        return {
            "method": self.method,
            "iterations": int(self.iterations.flatten()[index]),
            "residual": res if math.isfinite(res) else None,
            "converged": bool(self.converged.flatten()[index]),
            "stalled": bool(self.stalled.flatten()[index]),
            "diverged": bool(self.diverged.flatten()[index]),
            "tol": self.tol if math.isfinite(self.tol) else None,
        }

    def per_block(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Name each matrix of the flattened stack: ``{names[i]: self[i]}``.

        Raises:
            ValueError: ``names`` does not have one entry per matrix.
        """
        if len(names) != len(self):
            raise ValueError(f"names: got {len(names)} names for {len(self)} matrices")
        return {name: self[i] for i, name in enumerate(names)}

    @classmethod
    def concat(cls, reports: Sequence[SolverReport]) -> SolverReport:
        """Join reports of several stacks into one flat report, in order.

        Raises:
            ValueError: no reports, or they differ in method or tolerance.
        """
        if not reports:
            raise ValueError("reports: nothing to concatenate")
        first = reports[0]
        for i, rep in enumerate(reports):
            same_tol = rep.tol == first.tol or (math.isnan(rep.tol) and math.isnan(first.tol))
            if rep.method != first.method or not same_tol:
                raise ValueError(
                    f"reports[{i}]: method {rep.method!r} tol {rep.tol} differs from "
                    f"reports[0]: method {first.method!r} tol {first.tol}"
                )

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(rep, name).flatten() for rep in reports])

        return cls(
            method=first.method,
            iterations=cat("iterations"),
            residual=cat("residual"),
            converged=cat("converged"),
            tol=first.tol,
            stalled=cat("stalled"),
            diverged=cat("diverged"),
        )

    def all_converged(self) -> bool:
        """Whether every matrix of the stack met the tolerance."""
        return bool(self.converged.all())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: flat lists (row-major) plus the stack shape; NaN -> None."""
        return {
            "method": self.method,
            "shape": list(self.shape),
            "tol": self.tol if math.isfinite(self.tol) else None,
            "iterations": _to_python(self.iterations),
            "residual": _to_python(self.residual),
            "converged": _to_python(self.converged),
            "stalled": _to_python(self.stalled),
            "diverged": _to_python(self.diverged),
        }

    def summary(self) -> str:
        """One line: method, max / median iterations, max residual, how many converged."""
        n = len(self)
        if n == 0:
            return f"{self.method}: empty stack"
        its = self.iterations.flatten()
        res = self.residual.flatten()
        finite = res[torch.isfinite(res)]
        if res.isnan().all():
            max_res = "n/a"
        elif finite.numel() < res.numel():
            max_res = "non-finite"
        else:
            max_res = f"{float(finite.max()):.2e}"
        return (
            f"{self.method}: iterations max {int(its.max())} median {int(its.median())}, "
            f"max residual {max_res} (tol {self.tol:.1e}), "
            f"{int(self.converged.sum())}/{n} converged, {int(self.stalled.sum())} stalled, "
            f"{int(self.diverged.sum())} diverged"
        )


def warn_on_failure(report: SolverReport, max_iter: int | None, log: logging.Logger) -> None:
    """Log the report; warn when matrices hit the iteration cap, diverged, or stalled poorly.

    A stall at a floor above the tolerance is logged at INFO with the floor reached, and warned
    only when that floor is poor (above ``POOR_FLOOR``).
    """
    log.debug("%s", report.summary())
    n = len(report)
    ok = report.converged | report.stalled | report.diverged
    if max_iter is None:
        if (~ok).any():
            log.info(
                "%s: %d/%d results above tol %.1e (worst residual %.2e): rounding at this "
                "conditioning", report.method, int((~ok).sum()), n, report.tol,
                float(report.residual[~ok].max()),
            )
        capped = torch.zeros_like(ok)
    else:
        capped = ~ok & (report.iterations >= max_iter)
    if capped.any():
        worst = float(report.residual[capped].max())
        msg = (
            f"{report.method}: {int(capped.sum())}/{n} matrices hit max_iter={max_iter} without "
            f"converging (worst residual {worst:.2e}, tol {report.tol:.1e}); raise max_iter, "
            f"increase the damping, or use a direct solver"
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    if report.diverged.any():
        where = report.diverged.flatten().nonzero().flatten()[:8].tolist()
        msg = (
            f"{report.method}: {int(report.diverged.sum())}/{n} matrices diverged (flat stack "
            f"indices {where}...): the matrix is not positive definite, or the start / scale "
            f"does not fit its eigenvalues"
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    floored = report.stalled & ~report.converged & ~report.diverged
    if floored.any():
        floor = float(report.residual[floored].max())
        log.info(
            "%s: %d/%d matrices stopped at a rounding floor above tol %.1e (worst floor %.2e)",
            report.method, int(floored.sum()), n, report.tol, floor,
        )
        if floor > POOR_FLOOR:
            msg = (
                f"{report.method}: residual stalled at {floor:.2e} > {POOR_FLOOR:.0e} in "
                f"{int(floored.sum())}/{n} matrices; use float64 or more damping"
            )
            warnings.warn(msg, ConvergenceWarning, stacklevel=3)
