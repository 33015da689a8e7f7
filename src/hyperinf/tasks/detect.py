"""Mislabeled-data detection: rank training examples by how much they hurt the model.

Every method's ranking is shown beside two references that any user should compare
against: the training loss of each example under the model (``loss``), and the
self-influence of each method that has one (``self:<method>``). Influence scores follow the
package's convention (positive = harmful, rank descending); the loss and self-influence
rankings are descending as well.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset

from hyperinf.gradients import find_blocks
from hyperinf.scores.engine import InfluenceComputer, InfluenceResult
from hyperinf.scores.loaders import as_loader
from hyperinf.scores.methods import FIM_METHODS, METHODS, SELF_METHODS, parse_methods
from hyperinf.tasks.data import ExampleSet
from hyperinf.tasks.finetune import predict
from hyperinf.tasks.metrics import detection_at, detection_auc, detection_curve
from hyperinf.tasks.noise import flip_labels
from hyperinf.tasks.pipeline import (
    DataConfig,
    ModelConfig,
    UsageError,
    Workbench,
    build_model,
    load_data,
    output_folder,
    versions,
    write_json,
)
from hyperinf.tasks.plots import plot_detection, plot_image_grid

logger = logging.getLogger(__name__)

FRACTIONS = (0.1, 0.2, 0.3, 0.5)
ALL_FIM_LIMIT = 2048
PREVIEW = 80


@dataclass
class InfluenceConfig:
    """How influence is computed.

    Attributes:
        methods: Methods to run; ``("all",)`` for every method whose curvature fits.
        damping: The constant ``c`` of the per-block damping rule.
        batch_size: Examples per batch of the gradient passes.
        blocks: Block name patterns; every trainable block by default.
        max_fim_dim: Largest ``r d`` for the full-FIM methods.
        self_influence: Also rank by self-influence.
        cache_gib: Keep the training gradients in a temporary on-disk cache when they take
            at most this many GiB, so that the later passes read them instead of running
            the model again (0 to always recompute).
    """

    methods: tuple[str, ...] = ("all",)
    damping: float = 0.1
    batch_size: int = 32
    blocks: tuple[str, ...] | None = None
    max_fim_dim: int = 4096
    self_influence: bool = True
    cache_gib: float = 4.0

    def __post_init__(self) -> None:
        if self.methods != ("all",):
            try:
                self.methods = parse_methods(self.methods)
            except ValueError as error:
                raise UsageError(f"--method: {error}") from error
        if self.damping <= 0:
            raise UsageError(f"--damping must be positive, got {self.damping}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class DetectConfig:
    """Everything `hyperinf detect` needs; written into ``report.json``.

    Attributes:
        data: Where the examples come from.
        out: Output folder (replaced as a whole when the run succeeds).
        model: How the model is obtained.
        influence: How influence is computed.
        noise: Fraction of training labels to flip for benchmarking (0 for none).
        seed: Seed of the label noise.
        progress: Show progress bars.
    """

    data: DataConfig
    out: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    noise: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0:
            raise UsageError(f"--noise must be in [0, 1), got {self.noise}")


def resolve_methods(config: InfluenceConfig, blocks: list[Any]) -> tuple[str, ...]:
    """Expand ``all`` into every method whose curvature is cheap enough for the blocks.

    The full-FIM methods join when every block has ``r d <= min(max_fim_dim, 2048)``: above
    that, inverting ``(r d)^2`` matrices takes minutes on a CPU.
    """
    if config.methods != ("all",):
        return config.methods
    largest = max(block.r * block.d for block in blocks)
    fits_fim = largest <= min(config.max_fim_dim, ALL_FIM_LIMIT)
    return tuple(m for m in METHODS if fits_fim or m not in FIM_METHODS)


def run_influence(
    workbench: Workbench,
    train: ExampleSet,
    labels: np.ndarray,
    val: ExampleSet,
    config: InfluenceConfig,
    progress: bool,
) -> tuple[InfluenceResult, InfluenceResult | None, InfluenceComputer]:
    """Validation-average influence (and self-influence) of every training example."""
    train_data = workbench.dataset(train, labels)
    val_data = workbench.dataset(val, val.labels)
    order = _by_length(train_data)
    if order is not None:
        # Batches of texts of similar length waste little time on padding; the scores are
        # put back in dataset order below.
        train_data = Subset(train_data, order.tolist())
    blocks = find_blocks(workbench.model, include=config.blocks)
    methods = resolve_methods(config, blocks)
    gradient_bytes = len(train) * sum(block.r * block.d for block in blocks) * 4
    with tempfile.TemporaryDirectory(prefix="hyperinf-gradients-") as scratch:
        computer = InfluenceComputer(
            workbench.model,
            methods,
            blocks=blocks,
            damping=config.damping,
            batch_size=config.batch_size,
            max_fim_dim=config.max_fim_dim,
            cache_dir=scratch if gradient_bytes <= config.cache_gib * 2**30 else None,
            progress=progress,
        )
        computer.fit(as_loader(train_data, config.batch_size, workbench.collate))
        average = computer.score(as_loader(val_data, config.batch_size, workbench.collate))

        self_result = None
        self_methods = [m for m in methods if m in SELF_METHODS]
        if config.self_influence and self_methods:
            self_result = computer.score(mode="self", methods=self_methods)
    if order is not None:
        average = _in_dataset_order(average, order)
        self_result = self_result and _in_dataset_order(self_result, order)
    return average, self_result, computer


def _by_length(dataset: Any) -> np.ndarray | None:
    """Indices that sort a text dataset by length; ``None`` for other datasets."""
    lengths = getattr(dataset, "lengths", None)
    return None if lengths is None else np.argsort(lengths(), kind="stable")


def _in_dataset_order(result: InfluenceResult, order: np.ndarray) -> InfluenceResult:
    """Undo the permutation ``order`` of the training examples in a result."""
    inverse = torch.from_numpy(np.argsort(order))
    result.scores = {m: s[inverse] for m, s in result.scores.items()}
    result.block_scores = {m: s[inverse] for m, s in result.block_scores.items()}
    result.losses = result.losses[inverse]
    return result


def rankings(average: InfluenceResult, self_result: InfluenceResult | None) -> dict:
    """Every ranking as a score array, suspicious end largest."""
    columns = {"loss": average.losses.numpy().astype(np.float64)}
    for method, scores in average.scores.items():
        columns[method] = scores.numpy().astype(np.float64)
    if self_result is not None:
        for method, scores in self_result.scores.items():
            columns[f"self:{method}"] = scores.numpy().astype(np.float64)
    return columns


def evaluate(columns: dict[str, np.ndarray], flipped: np.ndarray | None) -> dict[str, Any]:
    """AUC and detection figures of every ranking against the flipped labels."""
    if flipped is None or not flipped.any():
        return {}
    metrics = {}
    for name, scores in columns.items():
        metrics[name] = {
            "auc": detection_auc(scores, flipped),
            "detection": detection_at(scores, flipped, FRACTIONS),
        }
    return metrics


def preview(text: str) -> str:
    """A one-line preview of a text, at most ``PREVIEW`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"


def scores_table(
    train: ExampleSet,
    given: np.ndarray,
    predicted: np.ndarray,
    columns: dict[str, np.ndarray],
    primary: str,
    flipped: np.ndarray | None,
) -> pd.DataFrame:
    """One row per training example, most suspicious (by ``primary``) first."""
    names = np.asarray(train.label_names)
    table = pd.DataFrame({"id": train.ids, "label": names[given], "predicted": names[predicted]})
    if flipped is not None:
        table["original_label"] = names[train.labels]
        table["flipped"] = flipped
    if train.kind == "text":
        table["text"] = [preview(text) for text in train.texts]
    for name, scores in columns.items():
        table[name] = scores
    order = np.lexsort((np.arange(len(given)), -columns[primary]))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def run_detect(config: DetectConfig) -> dict[str, Any]:
    """Run `hyperinf detect` end to end and write its outputs to ``config.out``.

    Returns:
        The report (also written to ``report.json``), with the summary table under
        ``"table"`` for printing.
    """
    started = time.perf_counter()
    train, val = load_data(config.data)
    given = train.labels.copy()
    flipped = None
    if config.noise > 0:
        given, flipped = flip_labels(
            train.labels, config.noise, num_classes=train.num_classes, seed=config.seed
        )

    tuning_started = time.perf_counter()
    workbench = build_model(train, given, config.model, progress=config.progress)
    tuning = time.perf_counter() - tuning_started
    average, self_result, computer = run_influence(
        workbench, train, given, val, config.influence, config.progress
    )
    train_data = workbench.dataset(train, given)
    predicted, _ = predict(workbench.model, train_data, collate=workbench.collate)
    val_predicted, _ = predict(
        workbench.model, workbench.dataset(val, val.labels), collate=workbench.collate
    )

    columns = rankings(average, self_result)
    metrics = evaluate(columns, flipped)
    primary = next(iter(average.scores))
    table = scores_table(train, given, np.asarray(predicted), columns, primary, flipped)

    report = _report(
        config, train, val, given, predicted, val_predicted, average, self_result,
        computer, workbench, metrics, tuning,
    )
    report["seconds"]["total"] = time.perf_counter() - started
    with output_folder(config.out) as folder:
        table.to_parquet(folder / "scores.parquet", index=False)
        table.to_csv(folder / "scores.csv", index=False)
        write_json(folder / "report.json", report)
        _plots(folder, train, given, predicted, columns, flipped, config.noise, primary)
    report["table"] = table
    return report


def _report(
    config: DetectConfig,
    train: ExampleSet,
    val: ExampleSet,
    given: np.ndarray,
    predicted: Any,
    val_predicted: Any,
    average: InfluenceResult,
    self_result: InfluenceResult | None,
    computer: InfluenceComputer,
    workbench: Workbench,
    metrics: dict[str, Any],
    tuning: float,
) -> dict[str, Any]:
    seconds = average.seconds
    shared = {k: v for k, v in seconds.items() if not k.startswith("inverse")}
    methods: dict[str, Any] = {}
    names = ["loss", *average.scores]
    if self_result is not None:
        names += [f"self:{method}" for method in self_result.scores]
    for name in names:
        method = name.removeprefix("self:")
        entry = dict(metrics.get(name, {}))
        entry["seconds"] = {
            "fine-tuning": tuning,
            **shared,
            "inverse": seconds.get(f"inverse/{method}", 0.0) if name != "loss" else 0.0,
        }
        methods[name] = entry

    reports = dict(average.reports)
    shares = {m: average.block_variance_share(m) for m in average.block_scores}
    if self_result is not None:
        shares.update(
            {f"self:{m}": self_result.block_variance_share(m) for m in self_result.block_scores}
        )
    return {
        "n_train": len(train),
        "n_val": len(val),
        "noise_rate": config.noise,
        "ground_truth": metrics != {},
        "note": None if metrics else "no label noise was injected, so there is no ground "
        "truth: the rankings are reported without detection figures",
        "num_classes": train.num_classes,
        "kind": train.kind,
        "accuracy": {
            "train_given_labels": float(np.mean(np.asarray(predicted) == given)),
            "val": float(np.mean(np.asarray(val_predicted) == val.labels)),
        },
        "methods": methods,
        "seconds": {"fine-tuning": tuning, **seconds},
        "blocks": [
            {"name": b.name, "kind": b.kind, "r": b.r, "d": b.d, "damping": average.damping[b.name]}
            for b in average.blocks
        ],
        "solver": reports,
        "block_variance_share": shares,
        "model": {"config": config.model, "trained": workbench.info},
        "influence": {
            "config": config.influence,
            "methods": list(computer.methods),
            "solver": computer.solver,
            "threads": torch.get_num_threads(),
        },
        "data": config.data,
        "seed": config.seed,
        "versions": versions(),
    }


def _plots(
    folder: Path,
    train: ExampleSet,
    given: np.ndarray,
    predicted: Any,
    columns: dict[str, np.ndarray],
    flipped: np.ndarray | None,
    noise: float,
    primary: str,
) -> None:
    if flipped is not None and flipped.any():
        curves = {name: detection_curve(scores, flipped) for name, scores in columns.items()}
        plot_detection(curves, noise, folder / "detection.png")
    if train.image_shape is not None:
        top = np.argsort(-columns[primary], kind="stable")[:32]
        images = train.features[top].reshape(len(top), *train.image_shape)
        names = np.asarray(train.label_names)
        plot_image_grid(
            images,
            names[given[top]],
            names[np.asarray(predicted)[top]],
            columns[primary][top],
            folder / "suspicious.png",
            title=f"Most suspicious training examples by {primary}",
        )
