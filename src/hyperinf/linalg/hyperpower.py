"""Inverses of SPD stacks by hyperpower (Schulz) iterations, with a scale-aware start.

The order-p hyperpower step is

    X_{k+1} = X_k (I + R_k + ... + R_k^{p-1}),     R_k = I - A X_k,

so that R_{k+1} = R_k^p: the iteration converges iff the spectral radius of R_0 is below 1,
and then with order p. p = 2 is Schulz's method X_{k+1} = X_k (2 I - A X_k).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hyperinf.linalg._checks import (
    check_rhs,
    check_square_stack,
    default_tol,
    lambda_max_bound,
)
from hyperinf.linalg.report import (
    SolverReport,
    inverse_residual,
    solve_residual,
    warn_on_failure,
)

__all__ = ["schulz_inverse", "schulz_solve"]

logger = logging.getLogger(__name__)

# A residual (RMS eigenvalue of I - A X) above this cannot come back: the iteration diverged.
DIVERGENCE_BOUND = 1e3
# Consecutive steps without a new best residual before the iteration is declared stalled.
STALL_PATIENCE = 3
# A residual above GROWTH times the best is growing, not flat: with rho(R_0) < 1 it cannot grow
# in exact arithmetic, so it is heading for divergence rather than sitting at a rounding floor.
GROWTH = 2.0

Init = str | float
Callback = Callable[[int, Tensor], None]


@dataclass
class _State:
    """Per-matrix bookkeeping of the iteration on a flattened stack of b matrices."""

    X: Tensor  # (b, d, d) current iterates
    R: Tensor  # (b, d, d) current residual matrices I - A X
    res: Tensor  # (b,) float64, RMS of R (as computed in the working dtype)
    best_X: Tensor | None  # (b, d, d) lowest-residual iterates (only with stall detection)
    best_res: Tensor  # (b,)
    misses: Tensor  # (b,) int64, consecutive steps without a new best
    iterations: Tensor  # (b,) int64
    done: Tensor  # (b,) bool
    stalled: Tensor  # (b,) bool
    diverged: Tensor  # (b,) bool
    met_tol: Tensor  # (b,) bool, stopped because the working-precision residual met tol


def _rms(R: Tensor) -> Tensor:
    """``||R||_F / sqrt(d)`` per matrix, as float64."""
    return torch.linalg.matrix_norm(R).double() / math.sqrt(R.shape[-1])


def _residual_matrix(A: Tensor, X: Tensor) -> Tensor:
    """``I - A X`` without materialising an identity stack."""
    R = torch.matmul(A, X).neg_()
    R.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return R


def _hyperpower_step(X: Tensor, R: Tensor, order: int) -> Tensor:
    """``X (I + R + ... + R^{p-1})`` with the polynomial evaluated by Horner's rule."""
    S = R.clone()
    S.diagonal(dim1=-2, dim2=-1).add_(1.0)
    for _ in range(order - 2):
        S = torch.matmul(R, S)
        S.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return torch.matmul(X, S)


def _check_options(order: int, tol: float, max_iter: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"order: expected an integer >= 2, got {order!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter: expected an integer >= 0, got {max_iter!r}")


def _lower_bound_tensor(lower_bound: float | Tensor, batch: torch.Size) -> Tensor:
    """``lower_bound`` as a float64 ``(b,)`` tensor, validated (finite, >= 0, broadcastable)."""
    lb = torch.as_tensor(lower_bound, dtype=torch.float64).cpu()
    try:
        lb = lb.expand(batch).reshape(-1)
    except RuntimeError as err:
        raise ValueError(
            f"lower_bound: shape {tuple(lb.shape)} does not broadcast to the stack {tuple(batch)}"
        ) from err
    if not bool(torch.isfinite(lb).all()) or bool((lb < 0).any()):
        raise ValueError("lower_bound: expected finite values >= 0 (a bound on lambda_min)")
    return lb


def initial_scale(
    A: Tensor, init: Init = "auto", lower_bound: float | Tensor | None = None
) -> Tensor:
    """The start ``X_0 = alpha I``: ``alpha`` per matrix.

    - ``"auto"``: ``alpha = 1 / ub`` with ``ub = min(||A||_F, ||A||_1) >= lambda_max``, so the
      eigenvalues of ``R_0 = I - alpha A`` lie in ``[0, 1)`` for every SPD ``A`` at any scale.
      With ``lower_bound`` ``lb <= lambda_min`` (e.g. the damping), ``alpha = 2 / (lb + ub)``,
      which centres the spectrum of ``R_0`` in ``(-1, 1)`` and shrinks its radius to
      ``(ub - lb) / (ub + lb)``.
    - ``"trace"``: ``alpha = 1 / trace(A)`` (``trace >= lambda_max`` for SPD ``A``).
    - a float: that fixed ``alpha`` for every matrix (not scale-aware; converges only if
      ``alpha < 2 / lambda_max``).

    Args:
        A: ``(..., d, d)`` SPD stack.
        init: ``"auto"``, ``"trace"`` or a positive float.
        lower_bound: only with ``"auto"``; a float or a tensor broadcastable to ``(...,)``.

    Returns:
        ``(b,)`` float64 scales for the flattened stack (``b`` = number of matrices). Entries
        that are not finite and positive mark matrices that cannot be started (``A`` not PD).

    Raises:
        ValueError: unknown ``init``, ``lower_bound`` with a non-``"auto"`` init, or a bad
            ``lower_bound``.
    """
    batch = A.shape[:-2]
    if lower_bound is not None and not (isinstance(init, str) and init == "auto"):
        raise ValueError(f"lower_bound: only used with init='auto', got init={init!r}")
    if isinstance(init, str):
        if init == "auto":
            ub = lambda_max_bound(A).reshape(-1).cpu()
            if lower_bound is None:
                return 1.0 / ub
            lb = torch.minimum(_lower_bound_tensor(lower_bound, batch), ub)
            return 2.0 / (lb + ub)
        if init == "trace":
            work = A.to(torch.float64) if A.device.type != "mps" else A.float()
            return 1.0 / work.diagonal(dim1=-2, dim2=-1).sum(-1).reshape(-1).cpu().double()
        raise ValueError(f"init: expected 'auto', 'trace' or a float, got {init!r}")
    if isinstance(init, bool) or not isinstance(init, int | float):
        raise ValueError(f"init: expected 'auto', 'trace' or a float, got {init!r}")
    if not (math.isfinite(init) and init > 0):
        raise ValueError(f"init: a fixed scale must be finite and > 0, got {init!r}")
    return torch.full((math.prod(batch),), float(init), dtype=torch.float64)


def _start(A: Tensor, alpha: Tensor, tol: float, detect_stall: bool) -> _State:
    """``X_0 = alpha I`` and its residual; matrices with an unusable ``alpha`` are diverged."""
    b, d = A.shape[0], A.shape[-1]
    startable = torch.isfinite(alpha) & (alpha > 0)
    alpha = torch.where(startable, alpha, 0.0).to(A.device, A.dtype)
    X = torch.zeros_like(A)
    X.diagonal(dim1=-2, dim2=-1).copy_(alpha[:, None].expand(b, d))
    R = _residual_matrix(A, X)
    res = _rms(R)
    bad = ~startable.to(A.device) | ~torch.isfinite(res) | (res > DIVERGENCE_BOUND)
    return _State(
        X=X,
        R=R,
        res=res,
        best_X=X.clone() if detect_stall else None,
        best_res=res.clone(),
        misses=torch.zeros(b, dtype=torch.int64, device=A.device),
        iterations=torch.zeros(b, dtype=torch.int64, device=A.device),
        done=bad | (res < tol),
        stalled=torch.zeros(b, dtype=torch.bool, device=A.device),
        diverged=bad,
        met_tol=~bad & (res < tol),
    )


def _stall_test(prev: Tensor, res: Tensor, misses: Tensor, d: int, order: int) -> Tensor:
    """Whether rounding, not the iteration, now sets the residual.

    In exact arithmetic ``R_{k+1} = R_k^p``, so ``res_{k+1} <= d^{(p-1)/2} res_k^p``. Once that
    bound guarantees at least a halving (then ``||R||_2 < 1``, so divergence is impossible), a
    residual above half the previous one can only be rounding: stall. Earlier (slow phase,
    residual near 1) only ``STALL_PATIENCE`` consecutive flat steps without a new best count.
    """
    guaranteed = d ** ((order - 1) / 2) * prev**order <= 0.5 * prev
    return (guaranteed & (res > 0.5 * prev)) | (misses >= STALL_PATIENCE)


def _step(A: Tensor, state: _State, k: int, order: int, tol: float, detect_stall: bool) -> None:
    """One hyperpower step on the matrices not yet done; the others stay frozen."""
    active = (~state.done).nonzero().flatten()
    every = active.numel() == A.shape[0]
    A_a = A if every else A[active]
    X_a = state.X if every else state.X[active]
    R_a = state.R if every else state.R[active]

    X_new = _hyperpower_step(X_a, R_a, order)
    R_new = _residual_matrix(A_a, X_new)
    res = _rms(R_new)

    prev = state.res[active]
    best = state.best_res[active]
    diverged = ~torch.isfinite(res) | (res > DIVERGENCE_BOUND)
    improved = ~diverged & (res < best)
    # Only a flat residual counts towards a stall; a growing one is left to reach the bound.
    flat = ~improved & (res <= GROWTH * best)
    misses = torch.where(improved, 0, state.misses[active] + flat.long())
    converged = ~diverged & (res < tol)
    stalled = torch.zeros_like(converged)
    if detect_stall:
        stalled = ~diverged & ~converged & _stall_test(prev, res, misses, A.shape[-1], order)

    state.X.index_copy_(0, active, X_new)
    state.R.index_copy_(0, active, R_new)
    if state.best_X is not None and bool(improved.any()):
        state.best_X.index_copy_(0, active[improved], X_new[improved])
    state.res[active] = res
    state.best_res[active] = torch.where(improved, res, best)
    state.misses[active] = misses
    state.iterations[active] = k
    state.diverged[active] |= diverged
    state.stalled[active] |= stalled
    state.met_tol[active] |= converged
    state.done[active] |= diverged | converged | stalled


def schulz_inverse(
    A: Tensor,
    order: int = 2,
    tol: float | None = None,
    max_iter: int = 100,
    init: Init = "auto",
    lower_bound: float | Tensor | None = None,
    detect_stall: bool = True,
    *,
    callback: Callback | None = None,
) -> tuple[Tensor, SolverReport]:
    """Invert a stack of SPD matrices by the order-p hyperpower iteration.

    Each matrix stops on its own residual ``||I - A X_k||_F / sqrt(d) < tol`` and is then
    frozen; the stack is updated with batched matmuls on its device and dtype.

    With ``detect_stall`` the iteration also stops a matrix whose residual no longer improves
    (the rounding floor, about ``eps * cond(A)``; see ``_stall_test``) and returns its best
    (lowest-residual) iterate, flagged ``stalled``. Without it, every matrix runs until
    ``tol``, divergence or ``max_iter``, and the last iterate is returned (``tol=0`` and
    ``detect_stall=False`` run exactly ``max_iter`` steps, as the paper's reference code does).

    The iteration's own residual is computed in the working precision; the reported one is
    recomputed in float64. A matrix whose working-precision residual met ``tol`` but whose
    recomputed one did not is also reported ``stalled`` (it sits at the rounding floor).

    A residual that becomes non-finite or exceeds ``1e3`` stops that matrix as ``diverged``:
    the matrix is not positive definite, or a fixed ``init`` is too large for it.

    Args:
        A: ``(..., d, d)`` symmetric positive definite matrices, float32 or float64.
        order: ``p >= 2``; each step costs ``p`` matrix products (2 = Schulz).
        tol: residual tolerance; default by dtype (float64 1e-10, float32 1e-4).
        max_iter: cap on the steps per matrix.
        init: start ``X_0 = alpha I``: ``"auto"`` (scale-aware, converges for every SPD
            input), ``"trace"`` or a fixed float ``alpha`` (see ``initial_scale``).
        lower_bound: a known lower bound of lambda_min (e.g. the damping), float or ``(...,)``
            tensor; sharpens the ``"auto"`` start.
        detect_stall: stop at the rounding floor and keep the best iterate.
        callback: called as ``callback(k, X)`` after each step ``k`` with the current iterates
            ``(..., d, d)`` (frozen matrices unchanged); for tracing, not for modifying ``X``.

    Returns:
        ``(X, report)``: ``X`` ``(..., d, d)`` approximating ``A^{-1}``, and a
        ``SolverReport`` of the stack with the recomputed residual ``||I - A X||_F / sqrt(d)``.
        ``iterations`` counts the steps computed; with a stall the returned iterate may be an
        earlier one.

    Raises:
        ValueError: ``A`` is not a finite, square, symmetric float stack, or an option is bad.
    """
    check_square_stack(A)
    tol = default_tol(A.dtype) if tol is None else float(tol)
    _check_options(order, tol, max_iter)
    batch, d = A.shape[:-2], A.shape[-1]
    flat = A.reshape(-1, d, d)

    state = _start(flat, initial_scale(A, init, lower_bound).to(flat.device), tol, detect_stall)
    for k in range(1, max_iter + 1):
        if bool(state.done.all()):
            break
        _step(flat, state, k, order, tol, detect_stall)
        if callback is not None:
            callback(k, state.X.reshape(A.shape))

    X = state.best_X if state.best_X is not None else state.X
    report = SolverReport.from_residual(
        "schulz",
        inverse_residual(flat, X).reshape(batch),
        tol,
        iterations=state.iterations.reshape(batch),
        stalled=state.stalled.reshape(batch),
        diverged=state.diverged.reshape(batch),
    )
    # A residual that met tol only as computed in the working precision is a rounding floor.
    report.stalled |= state.met_tol.reshape(batch).cpu() & ~report.converged
    warn_on_failure(report, max_iter, logger)
    return X.reshape(A.shape), report


def schulz_solve(A: Tensor, V: Tensor, **kwargs) -> tuple[Tensor, SolverReport]:
    """``V A^{-1}`` for a stack of right-hand sides, through ``schulz_inverse``.

    Args:
        A: ``(..., d, d)`` SPD stack.
        V: ``(..., m, d)`` rows to precondition; leading dims broadcast with ``A``'s.
        **kwargs: the options of ``schulz_inverse`` (order, tol, max_iter, init,
            lower_bound, detect_stall, callback).

    Returns:
        ``(H, report)``: ``H = V X`` ``(..., m, d)`` (``X`` symmetric, so this is
        ``(A^{-1} V^T)^T``), and a report over the broadcast stack whose residual is the solve
        residual ``||V - H A||_F / ||V||_F``; iterations, stalls and divergence are the
        inverse's.

    Raises:
        ValueError: bad ``A`` (see ``schulz_inverse``) or ``V`` (shape, dtype, device).
    """
    check_square_stack(A)
    batch = check_rhs(A, V)
    X, inv_report = schulz_inverse(A, **kwargs)
    H = torch.matmul(V, X)
    report = SolverReport.from_residual(
        "schulz",
        solve_residual(A, V, H).reshape(batch),
        inv_report.tol,
        iterations=inv_report.iterations.expand(batch),
        stalled=inv_report.stalled.expand(batch),
        diverged=inv_report.diverged.expand(batch),
    )
    return H, report
