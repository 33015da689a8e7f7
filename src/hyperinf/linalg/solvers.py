"""Reference solvers for SPD stacks: exact Cholesky, conjugate gradient, LiSSA.

All take right-hand sides as rows, ``V`` of shape ``(..., m, d)``, and return ``V A^{-1}``
(``A`` is symmetric, so this is ``(A^{-1} V^T)^T``) with a ``SolverReport`` per matrix of the
broadcast stack. DataInf, which needs per-example gradients rather than the matrix, lives in
``hyperinf.linalg.datainf`` and is re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

from hyperinf.linalg._checks import (
    check_rhs,
    check_square_stack,
    default_tol,
    first_bad,
    lambda_max_bound,
    stack_index,
)
from hyperinf.linalg.datainf import DataInfAccumulator, datainf_solve
from hyperinf.linalg.report import (
    SolverReport,
    inverse_residual,
    solve_residual,
    warn_on_failure,
)

__all__ = [
    "DataInfAccumulator",
    "cg_solve",
    "cholesky_factor",
    "cholesky_inverse",
    "cholesky_solve",
    "datainf_solve",
    "lissa_solve",
]

logger = logging.getLogger(__name__)

Callback = Callable[[int, Tensor], None]

# A relative residual above this cannot come back: the iteration diverged.
DIVERGENCE_BOUND = 1e3
# LiSSA's residual contracts monotonically in exact arithmetic; this many steps without a new
# best means rounding has taken over.
LISSA_PATIENCE = 50


def _check_tol_iter(tol: float, max_iter: int) -> None:
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter: expected an integer >= 0, got {max_iter!r}")


def cholesky_factor(A: Tensor) -> Tensor:
    """Lower Cholesky factors ``L`` ``(..., d, d)`` of an SPD stack, ``A = L L^T``.

    Raises:
        ValueError: ``A`` is not a finite symmetric float stack, or a matrix is not positive
            definite (the message names its stack index and the failing leading minor).
    """
    check_square_stack(A)
    L, info = torch.linalg.cholesky_ex(A)
    i = first_bad(info > 0)
    if i is not None:
        where = stack_index(i, A.shape[:-2])
        minor = int(info.flatten()[i])
        raise ValueError(
            f"A{where} is not positive definite (Cholesky fails at leading minor {minor}); "
            "add damping"
        )
    return L


def cholesky_inverse(A: Tensor, tol: float | None = None) -> tuple[Tensor, SolverReport]:
    """Exact inverse of an SPD stack by Cholesky.

    Args:
        A: ``(..., d, d)`` SPD, float32 or float64.
        tol: tolerance the recomputed residual is reported against (default by dtype).

    Returns:
        ``(X, report)``: ``X`` ``(..., d, d)``; the report has 0 iterations and the residual
        ``||I - A X||_F / sqrt(d)``.

    Raises:
        ValueError: see ``cholesky_factor``.
    """
    X = torch.cholesky_inverse(cholesky_factor(A))
    tol = default_tol(A.dtype) if tol is None else float(tol)
    report = SolverReport.from_residual("cholesky", inverse_residual(A, X), tol)
    warn_on_failure(report, None, logger)
    return X, report


def cholesky_solve(
    A: Tensor, V: Tensor, tol: float | None = None
) -> tuple[Tensor, SolverReport]:
    """Exact ``V A^{-1}`` by Cholesky.

    Args:
        A: ``(..., d, d)`` SPD.
        V: ``(..., m, d)``; leading dims broadcast with ``A``'s.
        tol: tolerance the recomputed residual is reported against (default by dtype).

    Returns:
        ``(H, report)``: ``H`` ``(..., m, d)``; the residual is ``||V - H A||_F / ||V||_F``.

    Raises:
        ValueError: see ``cholesky_factor``; bad ``V``.
    """
    check_square_stack(A)
    check_rhs(A, V)
    H = torch.cholesky_solve(V.mT, cholesky_factor(A)).mT
    tol = default_tol(A.dtype) if tol is None else float(tol)
    report = SolverReport.from_residual("cholesky", solve_residual(A, V, H), tol)
    warn_on_failure(report, None, logger)
    return H, report


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def cg_solve(
    A: Tensor,
    V: Tensor,
    tol: float | None = None,
    max_iter: int | None = None,
    *,
    callback: Callback | None = None,
) -> tuple[Tensor, SolverReport]:
    """``V A^{-1}`` by batched conjugate gradient, one CG run per row of ``V``.

    Each right-hand side stops on its recursive residual ``||v - x A|| <= tol ||v||`` and is
    then frozen. A curvature ``p^T A p <= 0`` (``A`` not positive definite) or a non-finite
    residual stops it as diverged. In finite precision the recursive residual keeps falling
    after the true one has reached its floor; a matrix whose rows all met ``tol`` recursively
    but whose recomputed residual did not is reported ``stalled``.

    Args:
        A: ``(..., d, d)`` SPD.
        V: ``(..., m, d)``; leading dims broadcast with ``A``'s.
        tol: relative residual tolerance per row (default by dtype).
        max_iter: cap on iterations per row (default ``10 d``: in floating point CG loses
            its finite termination, e.g. about ``4 d`` steps to 1e-10 at cond 1e4).
        callback: ``callback(k, X)`` after each iteration with the current ``(..., m, d)``.

    Returns:
        ``(H, report)``: ``H`` ``(..., m, d)``; per matrix, ``iterations`` is the most any of
        its rows needed and the residual is ``||V - H A||_F / ||V||_F``.

    Raises:
        ValueError: bad ``A`` / ``V`` or options.
    """
    check_square_stack(A)
    batch = check_rhs(A, V)
    m, d = V.shape[-2], A.shape[-1]
    tol = default_tol(A.dtype) if tol is None else float(tol)
    max_iter = 10 * d if max_iter is None else max_iter
    _check_tol_iter(tol, max_iter)

    R = V.expand(*batch, m, d).clone()
    X = torch.zeros_like(R)
    P = R.clone()
    rs = _rowdot(R, R)
    target = tol**2 * rs
    active = rs > target
    its = torch.zeros(rs.shape, dtype=torch.int64, device=A.device)
    broke = torch.zeros_like(active)

    for k in range(1, max_iter + 1):
        if not bool(active.any()):
            break
        AP = torch.matmul(P, A)
        pAp = _rowdot(P, AP)
        bad = active & ~(pAp > 0)
        broke |= bad
        active &= ~bad

        alpha = torch.where(active, rs / torch.where(active, pAp, 1.0), 0.0)
        X.addcmul_(alpha[..., None], P)
        R.addcmul_(alpha[..., None], AP, value=-1.0)
        rs_new = _rowdot(R, R)
        beta = torch.where(active, rs_new / torch.where(active, rs, 1.0), 0.0)
        P = torch.where(active[..., None], R + beta[..., None] * P, P)
        rs = torch.where(active, rs_new, rs)
        its = torch.where(active, k, its)

        nonfinite = active & ~torch.isfinite(rs_new)
        broke |= nonfinite
        active &= ~nonfinite & (rs_new > target)
        if callback is not None:
            callback(k, X)

    residual = solve_residual(A, V, X).reshape(batch)
    diverged = broke.any(-1).reshape(batch).cpu()
    met_recursive = (~active & ~broke).all(-1).reshape(batch).cpu()
    report = SolverReport.from_residual(
        "cg", residual, tol, iterations=its.amax(-1).reshape(batch), diverged=diverged
    )
    report.stalled = met_recursive & ~report.converged & ~diverged
    warn_on_failure(report, max_iter, logger)
    return X, report


def _lissa_scale(A: Tensor, scale: float | Tensor | None) -> Tensor:
    """The LiSSA scale ``s`` per matrix, ``(...,)`` float64; default ``min(||A||_F, ||A||_1)``."""
    if scale is None:
        return lambda_max_bound(A)
    s = torch.as_tensor(scale, dtype=torch.float64, device=A.device)
    try:
        s = s.expand(A.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"scale: shape {tuple(s.shape)} does not broadcast to the stack {tuple(A.shape[:-2])}"
        ) from err
    if not bool((torch.isfinite(s) & (s > 0)).all()):
        raise ValueError(f"scale: expected finite values > 0, got {scale!r}")
    return s


def lissa_solve(
    A: Tensor,
    V: Tensor,
    scale: float | Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
    *,
    callback: Callback | None = None,
) -> tuple[Tensor, SolverReport]:
    """``V A^{-1}`` by the LiSSA recursion ``h <- v + (I - A / s) h``, result ``h / s``.

    From ``h_0 = 0`` this is the Neumann series of ``(A / s)^{-1}``; it converges iff every
    eigenvalue of ``A`` lies in ``(0, 2 s)``, at the rate ``1 - lambda_min / s`` per step, so it
    is slow at high condition numbers (that shows in the report: the cap is hit). The default
    ``s = min(||A||_F, ||A||_1) >= lambda_max`` converges for every SPD input.

    Each matrix stops when its relative residual ``||V - X A||_F / ||V||_F < tol`` (exactly
    the step ``h_{k+1} - h_k``, computed anyway), when it diverges (non-finite or above
    ``1e3``), or, stalled, after ``LISSA_PATIENCE`` steps without a new best.

    Args:
        A: ``(..., d, d)`` SPD.
        V: ``(..., m, d)``; leading dims broadcast with ``A``'s.
        scale: ``s``, a float or a tensor broadcastable to ``A``'s leading dims.
        tol: relative residual tolerance per matrix (default by dtype).
        max_iter: cap on steps.
        callback: ``callback(k, X)`` after each step with the current ``(..., m, d)``.

    Returns:
        ``(H, report)``: ``H`` ``(..., m, d)`` and a report with the recomputed residual.

    Raises:
        ValueError: bad ``A`` / ``V`` / ``scale`` or options.
    """
    check_square_stack(A)
    batch = check_rhs(A, V)
    tol = default_tol(A.dtype) if tol is None else float(tol)
    _check_tol_iter(tol, max_iter)
    s = _lissa_scale(A, scale).to(A.dtype)[..., None, None]
    A_s = A / s

    vnorm = torch.linalg.matrix_norm(V).double().expand(batch)
    vnorm = torch.where(vnorm > 0, vnorm, 1.0)
    h = torch.zeros(*batch, *V.shape[-2:], dtype=A.dtype, device=A.device)
    r = V.expand_as(h).clone()
    best = torch.full(batch, math.inf, dtype=torch.float64, device=A.device)
    misses = torch.zeros(batch, dtype=torch.int64, device=A.device)
    its = torch.zeros_like(misses)
    active = torch.ones(batch, dtype=torch.bool, device=A.device)
    stalled = torch.zeros_like(active)
    diverged = torch.zeros_like(active)

    for k in range(1, max_iter + 1):
        if not bool(active.any()):
            break
        h = torch.where(active[..., None, None], h + r, h)
        r = V - torch.matmul(h, A_s)
        res = torch.linalg.matrix_norm(r).double() / vnorm
        its = torch.where(active, k, its)

        bad = active & (~torch.isfinite(res) | (res > DIVERGENCE_BOUND))
        improved = res < best
        best = torch.where(active & improved, res, best)
        misses = torch.where(improved, 0, misses + 1)
        stuck = active & ~bad & (misses >= LISSA_PATIENCE)
        diverged |= bad
        stalled |= stuck
        active &= ~bad & ~stuck & ~(res < tol)
        if callback is not None:
            callback(k, h / s)

    H = h / s
    report = SolverReport.from_residual(
        "lissa",
        solve_residual(A, V, H).reshape(batch),
        tol,
        iterations=its,
        stalled=stalled,
        diverged=diverged,
    )
    report.stalled &= ~report.converged
    warn_on_failure(report, max_iter, logger)
    return H, report
