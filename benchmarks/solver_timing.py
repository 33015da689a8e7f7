"""Batched Schulz against batched Cholesky on stacks of GFIM-like blocks, fp32, side by side.

Blocks like real LoRA GFIM blocks: G = g^T g / k from k = d / 4 gradient rows with a decaying
column spectrum (low rank), plus damping lambda = lambda_max(G) / 1e3, so cond(G + lambda I)
is about 1e3. Stacks of 24 blocks of 384 x 384 and of 1024 x 1024.

    .venv/bin/python benchmarks/solver_timing.py [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Callable

import torch

from hyperinf.linalg import ConvergenceWarning, schulz_inverse, schulz_solve

COND = 1e3
BLOCKS = 24
QUERY_ROWS = 8


def gfim_stack(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, damping)``: ``A`` ``(b, d, d)`` float32 ``G + lambda I``, ``damping`` ``(b,)``."""
    gen = torch.Generator().manual_seed(seed)
    k = d // 4
    g = torch.randn(b, k, d, generator=gen, dtype=torch.float64)
    g *= torch.logspace(0, -1.5, d, dtype=torch.float64)[torch.randperm(d, generator=gen)]
    G = g.mT @ g / k
    lam = torch.linalg.eigvalsh(G)[:, -1] / COND
    A = G + lam[:, None, None] * torch.eye(d, dtype=torch.float64)
    return ((A + A.mT) / 2).float(), lam.float()


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cholesky_inverse(A: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_inverse(torch.linalg.cholesky(A))


def cholesky_solve(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_solve(V.mT, torch.linalg.cholesky(A)).mT


def rel_error(H: torch.Tensor, ref: torch.Tensor) -> float:
    return float((H.double() - ref).norm() / ref.norm())


def bench(d: int, repeats: int) -> None:
    A, lam = gfim_stack(BLOCKS, d, seed=d)
    V = torch.randn(BLOCKS, QUERY_ROWS, d, generator=torch.Generator().manual_seed(1))
    ref = torch.linalg.solve(A.double(), V.double().mT).mT
    print(f"\n{BLOCKS} blocks of {d}x{d}, fp32, cond ~{COND:.0e}")

    t_chol_inv, _ = best_time(lambda: cholesky_inverse(A), repeats)
    t_chol_solve, H_chol = best_time(lambda: cholesky_solve(A, V), repeats)
    rows = [
        ("cholesky + cholesky_inverse", t_chol_inv, "-", "-", t_chol_inv),
        ("cholesky + cholesky_solve", t_chol_solve, "-", f"{rel_error(H_chol, ref):.1e}",
         t_chol_solve),
    ]
    variants = {
        "schulz p=2": {},
        "schulz p=2, lower_bound=damping": {"lower_bound": lam},
        "schulz p=3": {"order": 3},
    }
    for label, kwargs in variants.items():
        t_inv, (_, rep) = best_time(lambda kw=kwargs: schulz_inverse(A, **kw), repeats)
        its = f"{int(rep.iterations.max())}/{int(rep.iterations.median())}"
        rows.append((f"{label} inverse", t_inv, its, f"res {float(rep.residual.max()):.1e}",
                     t_chol_inv))
    t_solve, (H, rep) = best_time(lambda: schulz_solve(A, V), repeats)
    its = f"{int(rep.iterations.max())}/{int(rep.iterations.median())}"
    rows.append(("schulz p=2 solve", t_solve, its, f"{rel_error(H, ref):.1e}", t_chol_solve))

    print(f"  {'method':<42}{'time':>10}  {'iters max/med':>13}  {'accuracy':>12}  "
          f"{'ratio to Cholesky':>17}")
    for name, seconds, its, acc, base in rows:
        print(f"  {name:<42}{seconds:>9.3f}s  {its:>13}  {acc:>12}  {seconds / base:>17.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)
    logging.getLogger("hyperinf.linalg").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}; accuracy: relative error of V A^-1 vs float64 solve")
    for d in args.sizes:
        bench(d, args.repeats)


if __name__ == "__main__":
    main()
