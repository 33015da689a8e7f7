"""Synthetic convergence benchmark (the paper's Fig. 2 setting): figures, JSON and ratio table.

    .venv/bin/python benchmarks/convergence.py --out DIR [--quick | --full] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from hyperinf.bench.convergence import run, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny grid (seconds)")
    size.add_argument("--full", action="store_true", help="the paper's grid (hours on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    result = run(args.out, quick=args.quick, full=args.full, seed=args.seed)
    print(summary(result))


if __name__ == "__main__":
    main()
