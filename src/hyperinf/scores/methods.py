"""Influence methods: how each one turns query gradients into preconditioned vectors.

Every method shares the blocks, the damping and the sign convention. A method here is a
*preconditioner*: given vectors ``v`` per block, shape ``(m, r, d)``, it returns
``h = v (H + lambda I)^{-1}`` of the same shape, where ``H`` is the method's curvature:

================  =================================================  ============
method            h                                                  self-influence
================  =================================================  ============
``tracin``        ``v`` (a plain gradient dot product)               yes
``hyperinf``      ``v (G + lambda I)^{-1}``, Schulz on the GFIM       yes
``exact-gfim``    the same by Cholesky                               yes
``hyperinf-fim``  ``(F + lambda I)^{-1} vec(v)``, Schulz, full FIM    yes
``exact``         the same by Cholesky                               yes
``lissa``         LiSSA recursion on ``I_r (x) G + lambda I``         no
``datainf``       mean of per-example Sherman-Morrison inverses      no
================  =================================================  ============

The influence score of training example ``i`` is then ``-sum_blocks <g_i, h>``: positive
means harmful.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hyperinf.linalg import (
    ConvergenceWarning,
    DataInfAccumulator,
    cholesky_inverse,
    lissa_solve,
    schulz_inverse,
)

logger = logging.getLogger(__name__)

GFIM_METHODS = ("hyperinf", "exact-gfim", "lissa")
FIM_METHODS = ("hyperinf-fim", "exact")
METHODS = ("hyperinf", "hyperinf-fim", "datainf", "lissa", "tracin", "exact", "exact-gfim")
SELF_METHODS = ("tracin", "hyperinf", "exact-gfim", "hyperinf-fim", "exact")


@dataclass(frozen=True)
class SolverOptions:
    """Knobs of the iterative solvers.

    Attributes:
        order: Order of the hyperpower iteration (2 is Schulz).
        tol: Residual tolerance of Schulz; ``None`` picks the default of the dtype.
        max_iter: Iteration cap of Schulz.
        lissa_tol: Relative residual tolerance of LiSSA.
        lissa_max_iter: Iteration cap of LiSSA.
    """

    order: int = 2
    tol: float | None = None
    max_iter: int = 100
    lissa_tol: float = 1e-6
    lissa_max_iter: int = 1000

    def __post_init__(self) -> None:
        if self.order < 2:
            raise ValueError(f"order must be at least 2, got {self.order}")
        if self.max_iter < 1 or self.lissa_max_iter < 1:
            raise ValueError("max_iter and lissa_max_iter must be at least 1")


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """Validate method names; accept a comma-separated string or a sequence.

    Raises:
        ValueError: For an unknown or repeated name, or no name at all.
    """
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ValueError(f"no method given; choose from {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is named twice in {names}")
    return tuple(names)


@dataclass
class Preconditioner:
    """A fitted method: maps query vectors per block to ``v (H + lambda I)^{-1}``.

    Attributes:
        method: The method's name.
        inverses: Per block, the explicit inverse of the damped curvature: ``(d, d)`` for
            GFIM methods, ``(r d, r d)`` for full-FIM methods; empty for ``tracin``.
        reports: Per block, the solver's report as a dict.
    """

    method: str
    inverses: dict[str, Tensor] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def supports_self(self) -> bool:
        return self.method in SELF_METHODS

    def apply(self, vectors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Precondition vectors ``(m, r, d)`` per block; returns the same shapes."""
        if self.method == "tracin":
            return dict(vectors)
        out = {}
        for name, v in vectors.items():
            inverse = self.inverses[name]
            v = v.to(inverse.dtype)
            if inverse.shape[-1] == v.shape[-1]:
                out[name] = v @ inverse
            else:
                out[name] = (v.flatten(1) @ inverse).view_as(v)
        return out


def _stack_by_size(matrices: Mapping[str, Tensor]) -> list[tuple[list[str], Tensor]]:
    """Group equally sized square matrices into stacks for one batched solver call."""
    groups: dict[int, list[str]] = {}
    for name, matrix in matrices.items():
        groups.setdefault(matrix.shape[-1], []).append(name)
    return [(names, torch.stack([matrices[n] for n in names])) for names in groups.values()]


def _report_rows(report: Any, names: Sequence[str], dampings: Mapping[str, float]) -> dict:
    rows = {}
    for i, name in enumerate(names):
        row = report[i]
        row["damping"] = dampings[name]
        rows[name] = row
    return rows


def fit_inverse(
    method: str,
    damped: Mapping[str, Tensor],
    dampings: Mapping[str, float],
    options: SolverOptions,
) -> Preconditioner:
    """Invert the damped curvature blocks for a matrix method.

    Args:
        method: ``hyperinf``, ``exact-gfim``, ``hyperinf-fim`` or ``exact``.
        damped: Per block, the damped curvature ``G + lambda I`` or ``F + lambda I``.
        dampings: Per block, lambda (a lower bound of the smallest eigenvalue).
        options: Solver knobs.

    Returns:
        The fitted preconditioner with one report per block.
    """
    preconditioner = Preconditioner(method)
    for names, stack in _stack_by_size(damped):
        if method in ("hyperinf", "hyperinf-fim"):
            lower = torch.tensor([dampings[n] for n in names], dtype=stack.dtype)
            inverse, report = schulz_inverse(
                stack,
                order=options.order,
                tol=options.tol,
                max_iter=options.max_iter,
                lower_bound=lower.to(stack.device),
            )
        else:
            inverse, report = cholesky_inverse(stack)
        for i, name in enumerate(names):
            preconditioner.inverses[name] = inverse[i]
        preconditioner.reports.update(_report_rows(report, names, dampings))
    return preconditioner


def lissa_apply(
    damped: Mapping[str, Tensor],
    dampings: Mapping[str, float],
    vectors: Mapping[str, Tensor],
    options: SolverOptions,
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Run LiSSA on ``I_r (x) G + lambda I`` for query vectors ``(m, r, d)`` per block.

    Blocks whose query rows have the same shape run as one stack, in one solver call.
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, v in vectors.items():
        groups.setdefault(tuple(v.shape), []).append(name)

    out, reports = {}, {}
    for shape, names in groups.items():
        matrices = torch.stack([damped[name] for name in names])
        rows = torch.stack(
            [vectors[name].to(matrices.dtype).reshape(-1, shape[-1]) for name in names]
        )
        with warnings.catch_warnings():
            # One warning per stack would bury the summary that the engine gives per method.
            warnings.simplefilter("ignore", ConvergenceWarning)
            h, report = lissa_solve(
                matrices, rows, tol=options.lissa_tol, max_iter=options.lissa_max_iter
            )
        for i, name in enumerate(names):
            out[name] = h[i].view(shape)
        reports.update(_report_rows(report, names, dampings))
    return out, reports


class DataInfPass:
    """DataInf's closed form for fixed query vectors, fed with training gradients.

    ``h = (1 / (n lambda)) sum_i (v - c_i g_i)``, ``c_i = <v, g_i> / (lambda + ||g_i||^2)``,
    per block. It needs the damping first (from the curvature pass) and then one more pass
    over the training gradients.
    """

    def __init__(self, vectors: Mapping[str, Tensor], dampings: Mapping[str, float]) -> None:
        self.dampings = dict(dampings)
        self._accumulators = {
            name: DataInfAccumulator(v.to(torch.float64), dampings[name])
            for name, v in vectors.items()
        }

    def update(self, grads: Mapping[str, Tensor]) -> None:
        for name, accumulator in self._accumulators.items():
            accumulator.update(grads[name].to(torch.float64))

    def result(self) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
        out, reports = {}, {}
        for name, accumulator in self._accumulators.items():
            h, report = accumulator.result()
            out[name] = h
            reports.update(_report_rows(report, [name], self.dampings))
        return out, reports
