"""Input validation and bounds shared by the solvers of this package."""

from __future__ import annotations

import torch
from torch import Tensor

# Residual tolerances by dtype. The residual cannot fall below a rounding floor of a few
# eps * cond(A) (measured at d = 256: fp32 3e-6 / 1.4e-4 / 1e-2 at cond 1e2 / 1e4 / 1e6, fp64
# 8e-15 / 4e-13 / 4e-11); fp32 Cholesky has the same floor. fp32 1e-4 is met up to cond ~5e3,
# which covers the damped LoRA GFIM blocks measured (cond 2e2..4e3, floors 2e-6..4e-5); worse
# blocks stop at their floor, flagged stalled. A relative error of 1e-4 in the preconditioned
# gradient is far below what moves an influence ranking. fp64 1e-10 is met up to cond ~1e6.
# Schulz's residual squares each step, so a tighter tolerance costs at most one more step.
_DEFAULT_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}

# Relative asymmetry ||A - A^T||_F / ||A||_F above which a matrix is not taken as symmetric.
# Looser in low precision, where a Gram matrix built by blocked matmuls is not bitwise symmetric.
_ASYMMETRY_TOL = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}


def default_tol(dtype: torch.dtype) -> float:
    """The default residual tolerance for a floating dtype (fp64 1e-10, fp32 1e-4)."""
    return _DEFAULT_TOL[dtype]


def stack_index(flat_index: int, batch_shape: torch.Size) -> str:
    """``"[i, j]"`` for a flat index into a stack of leading shape ``batch_shape``."""
    if len(batch_shape) == 0:
        return ""
    idx = []
    for size in reversed(batch_shape):
        idx.append(flat_index % size)
        flat_index //= size
    return "[" + ", ".join(str(i) for i in reversed(idx)) + "]"


def first_bad(bad: Tensor) -> int | None:
    """Flat index of the first True of ``bad``, or None."""
    hits = bad.flatten().nonzero()
    return int(hits[0, 0]) if hits.numel() else None


def check_float(x: Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a real floating tensor of a supported dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DEFAULT_TOL:
        raise ValueError(
            f"{name}: dtype {x.dtype} is not supported; use torch.float32 or torch.float64"
        )


def check_finite(x: Tensor, name: str, batch_ndim: int) -> None:
    """Raise ValueError naming the first stack element of ``x`` with NaN or inf entries."""
    bad = ~torch.isfinite(x).flatten(start_dim=batch_ndim).all(dim=-1) if x.numel() else None
    if bad is not None:
        i = first_bad(bad)
        if i is not None:
            where = stack_index(i, x.shape[:batch_ndim])
            raise ValueError(f"{name}{where} has non-finite entries (NaN or inf)")


def check_square_stack(A: Tensor, name: str = "A", symmetric: bool = True) -> None:
    """Validate a stack ``(..., d, d)`` of symmetric matrices.

    Raises:
        ValueError: wrong dtype, fewer than 2 dims, not square, empty, non-finite entries, or
            (with ``symmetric``) a relative asymmetry above the dtype's threshold; the message
            names the stack index.
    """
    check_float(A, name)
    if A.ndim < 2:
        raise ValueError(f"{name}: expected a stack (..., d, d), got shape {tuple(A.shape)}")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name}: matrices must be square, got shape {tuple(A.shape)}")
    if A.shape[-1] == 0:
        raise ValueError(f"{name}: matrices are empty (d = 0)")
    batch_ndim = A.ndim - 2
    check_finite(A, name, batch_ndim)
    if symmetric:
        check_symmetric(A, name)


def check_symmetric(A: Tensor, name: str) -> None:
    """Raise ValueError naming the first matrix with ``||A - A^T||_F > tol * ||A||_F``."""
    work = A.to(torch.float64) if A.device.type != "mps" else A.float()
    asym = torch.linalg.matrix_norm(work - work.mT)
    scale = torch.linalg.matrix_norm(work)
    tol = _ASYMMETRY_TOL[A.dtype]
    i = first_bad(asym > tol * scale)
    if i is not None:
        where = stack_index(i, A.shape[:-2])
        rel = float((asym / scale.clamp_min(torch.finfo(work.dtype).tiny)).flatten()[i])
        raise ValueError(
            f"{name}{where} is not symmetric: ||A - A^T||_F / ||A||_F = {rel:.2e} > {tol:.0e}"
        )


def check_rhs(A: Tensor, V: Tensor, name: str = "V") -> torch.Size:
    """Validate right-hand sides ``V`` ``(..., m, d)`` against ``A`` ``(..., d, d)``.

    Returns:
        The broadcast leading shape of ``A`` and ``V``.

    Raises:
        ValueError: dtype/device mismatch, wrong last dim, non-broadcastable leading dims,
            non-finite entries.
    """
    check_float(V, name)
    if V.ndim < 2:
        raise ValueError(f"{name}: expected a stack (..., m, d), got shape {tuple(V.shape)}")
    if V.dtype != A.dtype or V.device != A.device:
        raise ValueError(
            f"{name}: dtype/device {V.dtype}/{V.device} differ from A's {A.dtype}/{A.device}"
        )
    d = A.shape[-1]
    if V.shape[-1] != d:
        raise ValueError(f"{name}: last dim {V.shape[-1]} does not match A's d = {d}")
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], V.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"{name}: leading dims {tuple(V.shape[:-2])} do not broadcast with A's "
            f"{tuple(A.shape[:-2])}"
        ) from err
    check_finite(V, name, V.ndim - 2)
    return batch


def lambda_max_bound(A: Tensor) -> Tensor:
    """A guaranteed upper bound of lambda_max for symmetric ``A``: ``min(||A||_F, ||A||_1)``.

    Any matrix norm bounds the spectral radius. Computed in float64 (float32 on MPS) so that
    squaring entries of 1e-20 or 1e20 neither underflows nor overflows.

    Args:
        A: ``(..., d, d)``.

    Returns:
        ``(...,)`` bounds in float64 (float32 on MPS).
    """
    work = A.to(torch.float64) if A.device.type != "mps" else A.float()
    fro = torch.linalg.matrix_norm(work)
    one = torch.linalg.matrix_norm(work, ord=1)
    return torch.minimum(fro, one)
