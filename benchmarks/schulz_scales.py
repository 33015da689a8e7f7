"""Schulz on SPD matrices of condition 1e2..1e6 at scales 1e-8..1e8, fp32 and fp64, d = 256.

For each case: our Schulz (scale-aware start, residual stopping with stall detection) and the
paper's reference configuration (X_0 = 5e-5 I, a fixed 30 steps); the relative error of
V A^{-1} against torch.linalg.solve in float64 on the same (rounded) matrix, for 8 random rows V.

    .venv/bin/python benchmarks/schulz_scales.py [--d 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings

import torch

from hyperinf.linalg import ConvergenceWarning, schulz_inverse

CONDS = (1e2, 1e4, 1e6)
SCALES = (1e-8, 1e-4, 1.0, 1e4, 1e8)
FAIL = 1e-2


def spd(d: int, cond: float, scale: float, seed: int) -> torch.Tensor:
    """``scale * Q diag(logspace(0, -log10 cond)) Q^T`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    A = (Q * torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)) @ Q.T * scale
    return (A + A.T) / 2


def rel_error(A: torch.Tensor, X: torch.Tensor, V: torch.Tensor) -> float:
    A64 = A.double()
    ref = torch.linalg.solve(A64, V.T).T
    err = float((V @ X.double() - ref).norm() / ref.norm())
    return err if math.isfinite(err) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    logging.getLogger("hyperinf.linalg").setLevel(logging.ERROR)

    print(f"d={args.d}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'dtype':<8}{'cond':>7}{'scale':>8} | {'iters':>5} {'residual':>9} {'status':<9}"
          f"{'rel.err':>9} | {'reference rel.err':>17}")
    failures, total = 0, 0
    for dtype in (torch.float32, torch.float64):
        for cond in CONDS:
            for scale in SCALES:
                A = spd(args.d, cond, scale, args.seed).to(dtype)
                V = torch.randn(8, args.d, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(args.seed + 1))
                X, rep = schulz_inverse(A)
                X_ref, rep_ref = schulz_inverse(
                    A, init=5e-5, tol=0.0, max_iter=30, detect_stall=False
                )
                status = ("converged" if rep.all_converged() else
                          "stalled" if bool(rep.stalled.all()) else "FAILED")
                ref_err = rel_error(A, X_ref, V)
                ref_note = " diverged" if bool(rep_ref.diverged.all()) else ""
                failures += not ref_err <= FAIL
                total += 1
                print(f"{str(dtype)[6:]:<8}{cond:>7.0e}{scale:>8.0e} | "
                      f"{int(rep.iterations):>5} {float(rep.residual):>9.1e} {status:<9}"
                      f"{rel_error(A, X, V):>9.1e} | {ref_err:>17.1e}{ref_note}")
    print(f"reference configuration (5e-5 I, 30 steps): relative error > {FAIL:g} or "
          f"non-finite in {failures}/{total} cases")


if __name__ == "__main__":
    main()
