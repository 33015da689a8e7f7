"""Random SPD stacks with a chosen condition number and scale, for the solver tests."""

from __future__ import annotations

import math

import torch


def make_spd(
    d: int,
    cond: float = 1e2,
    scale: float = 1.0,
    batch: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> torch.Tensor:
    """``scale * Q diag(logspace(0, -log10 cond)) Q^T``, exactly symmetric, ``(*batch, d, d)``."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, d, d, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)
    A = (Q * eig) @ Q.mT * scale
    return ((A + A.mT) / 2).to(dtype)

