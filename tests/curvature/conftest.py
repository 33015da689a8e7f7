"""Slow, obvious references for the curvature tests: python loops over training examples."""

from types import SimpleNamespace

import pytest
import torch


def gfim_loop(grads: torch.Tensor) -> torch.Tensor:
    """G = (1 / (n r)) sum_i g_i^T g_i, one example at a time, in float64."""
    n, r, d = grads.shape
    total = torch.zeros(d, d, dtype=torch.float64)
    for g in grads.double():
        total += g.T @ g
    return total / (n * r)


def fim_loop(grads: torch.Tensor) -> torch.Tensor:
    """F = (1 / n) sum_i vec(g_i) vec(g_i)^T with row-major vec, one example at a time."""
    n, r, d = grads.shape
    total = torch.zeros(r * d, r * d, dtype=torch.float64)
    for g in grads.double():
        flat = torch.tensor([g[row, col].item() for row in range(r) for col in range(d)],
                            dtype=torch.float64)
        total += torch.outer(flat, flat)
    return total / n


def damping_loop(grads: torch.Tensor, c: float) -> float:
    """lambda = c * mean_i ||g_i||_F^2 / (r d)."""
    n, r, d = grads.shape
    norms = [float((g.double() ** 2).sum()) for g in grads]
    return c * sum(norms) / n / (r * d)


@pytest.fixture
def reference() -> SimpleNamespace:
    return SimpleNamespace(gfim=gfim_loop, fim=fim_loop, damping=damping_loop)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
