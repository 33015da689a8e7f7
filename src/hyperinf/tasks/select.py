"""Data selection: keep the training examples that help the validation loss most.

The helpful end of the validation-average influence is its most negative scores (removing
such an example would raise the validation loss). ``--evaluate`` retrains on the selected
subset, on random subsets of the same size and on the full set, and compares validation
accuracy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hyperinf.tasks.data import ExampleSet, write_examples
from hyperinf.tasks.detect import InfluenceConfig, run_influence
from hyperinf.tasks.finetune import evaluate_accuracy
from hyperinf.tasks.noise import flip_labels
from hyperinf.tasks.pipeline import (
    DataConfig,
    ModelConfig,
    UsageError,
    build_model,
    load_data,
    output_folder,
    versions,
    write_json,
)
from hyperinf.tasks.plots import plot_selection

logger = logging.getLogger(__name__)


@dataclass
class SelectConfig:
    """Everything `hyperinf select` needs; written into ``report.json``.

    Attributes:
        data: Where the examples come from.
        out: Output folder (replaced as a whole when the run succeeds).
        fraction: Fraction of the training set to keep, in (0, 1].
        method: The influence method that ranks the examples.
        model: How the model is obtained.
        influence: How influence is computed (its ``methods`` are ignored).
        evaluate: Retrain on the subset, random subsets and the full set.
        random_seeds: How many random subsets to compare against.
        noise: Fraction of training labels to flip first (for benchmarking).
        seed: Seed of the noise and of the random subsets.
        progress: Show progress bars.
    """

    data: DataConfig
    out: Path
    fraction: float = 0.5
    method: str = "hyperinf"
    model: ModelConfig = field(default_factory=ModelConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    evaluate: bool = False
    random_seeds: int = 3
    noise: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.noise < 1.0:
            raise UsageError(f"--noise must be in [0, 1), got {self.noise}")
        if self.random_seeds < 1:
            raise UsageError(f"--random-seeds must be at least 1, got {self.random_seeds}")
        self.influence = InfluenceConfig(
            methods=(self.method,),
            damping=self.influence.damping,
            batch_size=self.influence.batch_size,
            blocks=self.influence.blocks,
            max_fim_dim=self.influence.max_fim_dim,
            self_influence=False,
        )


def select_helpful(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``ceil(fraction * n)`` most negative scores, in dataset order.

    Ties are broken by index, so the selection is deterministic.
    """
    n = len(scores)
    keep = max(1, int(np.ceil(fraction * n - 1e-9)))
    order = np.lexsort((np.arange(n), scores))
    return np.sort(order[:keep])


def run_select(config: SelectConfig) -> dict[str, Any]:
    """Run `hyperinf select` end to end and write its outputs to ``config.out``."""
    started = time.perf_counter()
    train, val = load_data(config.data)
    given = train.labels.copy()
    if config.noise > 0:
        given, _ = flip_labels(
            train.labels, config.noise, num_classes=train.num_classes, seed=config.seed
        )

    workbench = build_model(train, given, config.model, progress=config.progress)
    average, _, _ = run_influence(
        workbench, train, given, val, config.influence, config.progress
    )
    scores = average.scores[config.method].numpy().astype(np.float64)
    chosen = select_helpful(scores, config.fraction)

    report: dict[str, Any] = {
        "n_train": len(train),
        "n_val": len(val),
        "n_selected": len(chosen),
        "fraction": config.fraction,
        "method": config.method,
        "noise_rate": config.noise,
        "seconds": dict(average.seconds),
        "config": config,
        "versions": versions(),
    }
    if config.evaluate:
        full = evaluate_accuracy(
            workbench.model, workbench.dataset(val, val.labels), collate=workbench.collate
        )
        report["evaluation"] = evaluate_selection(config, train, given, val, chosen, full)
    report["seconds"]["total"] = time.perf_counter() - started

    table = pd.DataFrame(
        {"id": train.ids, "score": scores, "selected": np.isin(np.arange(len(train)), chosen)}
    )
    with output_folder(config.out) as folder:
        path = write_examples(train.subset(chosen), folder / f"selected{_suffix(train)}")
        table.to_csv(folder / "selection.csv", index=False)
        write_json(folder / "report.json", report)
        if config.evaluate:
            _plot(report["evaluation"], config.fraction, folder / "selection.png")
    report["selected_path"] = str(config.out / path.name)
    return report


def _suffix(train: ExampleSet) -> str:
    return {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "hf": ""}.get(
        train.fmt, ".csv"
    )


def evaluate_selection(
    config: SelectConfig,
    train: ExampleSet,
    given: np.ndarray,
    val: ExampleSet,
    chosen: np.ndarray,
    full_accuracy: float,
) -> dict[str, Any]:
    """Validation accuracy after retraining on the subset and on random subsets.

    The model trained on the full set with the same settings and seed is the one that
    ranked the examples, so its accuracy, ``full_accuracy``, is not trained again.
    """
    rng = np.random.default_rng(config.seed)
    subsets = {"influence": chosen}
    for k in range(config.random_seeds):
        random = np.sort(rng.choice(len(train), size=len(chosen), replace=False))
        subsets[f"random-{k}"] = random

    accuracy = {"full": float(full_accuracy)}
    for name, indices in subsets.items():
        subset = train.subset(indices)
        workbench = build_model(subset, given[indices], config.model, progress=config.progress)
        val_data = workbench.dataset(val, val.labels)
        accuracy[name] = float(
            evaluate_accuracy(workbench.model, val_data, collate=workbench.collate)
        )
        logger.info("retrained on %s (%d examples): val accuracy %.4f", name, len(indices),
                    accuracy[name])
    randoms = [v for k, v in accuracy.items() if k.startswith("random-")]
    return {
        "accuracy": accuracy,
        "random_mean": float(np.mean(randoms)),
        "random_std": float(np.std(randoms)),
        "n_subset": len(chosen),
    }


def _plot(evaluation: dict[str, Any], fraction: float, path: Path) -> None:
    accuracy = evaluation["accuracy"]
    randoms = [v for k, v in accuracy.items() if k.startswith("random-")]
    plot_selection(
        {
            "influence": {fraction: [accuracy["influence"]]},
            "random": {fraction: randoms},
            "full": {1.0: [accuracy["full"]]},
        },
        path,
    )
