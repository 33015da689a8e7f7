"""What `detect` and `select` share: the data, the model, and writing results safely."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import hyperinf
from hyperinf.tasks.atomic import replace_folder
from hyperinf.tasks.data import ExampleSet, load_builtin, load_examples
from hyperinf.tasks.finetune import (
    collate_text,
    default_text_model_dir,
    finetune_lora,
    load_text_classifier,
    text_dataset,
)
from hyperinf.tasks.models import features_dataset, train_mlp

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A bad option or input that the command line reports in one line."""


@dataclass
class ModelConfig:
    """How the model is obtained: loaded, or fine-tuned here.

    Attributes:
        model: Folder of a Hugging Face sequence-classification model (text data); ``None``
            for the built-in text model (MiniLM) or, for feature tables, the built-in MLP.
        adapter: Folder of a PEFT adapter to load on ``model`` instead of fine-tuning.
        lora_rank: LoRA rank when fine-tuning.
        lora_alpha: LoRA alpha.
        lora_targets: Modules that get LoRA adapters.
        epochs: Fine-tuning epochs (text) or MLP training epochs (features).
        lr: Learning rate; ``None`` for the default of the model kind.
        max_length: Longest tokenised text.
        hidden: Hidden layer sizes of the MLP.
        train_batch_size: Batch size of fine-tuning.
        seed: Seed of fine-tuning.
    """

    model: str | None = None
    adapter: str | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("query", "value")
    epochs: int | None = None
    lr: float | None = None
    max_length: int = 128
    hidden: tuple[int, ...] = (32,)
    train_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.adapter is not None and self.model is None:
            raise UsageError("--adapter needs --model (the base model the adapter belongs to)")
        if self.lora_rank < 1:
            raise UsageError(f"--lora-rank must be at least 1, got {self.lora_rank}")
        if self.epochs is not None and self.epochs < 0:
            raise UsageError(f"--epochs must be non-negative, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")


@dataclass
class DataConfig:
    """Where the examples come from.

    Attributes:
        train: A file, a ``datasets`` folder or ``builtin:NAME``.
        val: Validation data in the same form; ``None`` only with a built-in set.
        text_field: Field holding the text.
        label_field: Field holding the label.
        feature_fields: Numeric feature fields of a table; all numeric fields by default.
        seed: Seed of the built-in sets' split.
    """

    train: str
    val: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    feature_fields: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.val is None and not self.train.startswith("builtin:"):
            raise UsageError("--val is required unless --train is a builtin: set")


def load_data(config: DataConfig) -> tuple[ExampleSet, ExampleSet]:
    """Load the training and validation examples with one label mapping."""
    if config.train.startswith("builtin:") and config.val is None:
        return load_builtin(config.train, seed=config.seed)
    fields = dict(
        text_field=config.text_field,
        label_field=config.label_field,
        feature_fields=config.feature_fields,
    )
    train = load_examples(config.train, **fields)
    val = load_examples(config.val, label_names=train.label_names, **fields)
    if train.kind != val.kind:
        raise UsageError(
            f"--train {config.train} holds {train.kind} examples but --val {config.val} "
            f"holds {val.kind} examples"
        )
    return train, val


@dataclass
class Workbench:
    """A model with the means to turn examples into its batches.

    Attributes:
        model: The trained model, in eval mode.
        dataset: Turns an example set (with given labels) into a dataset of the model's
            own examples.
        collate: Collation of those examples into batches.
        info: What the model is and how it was trained, for the report.
    """

    model: nn.Module
    dataset: Callable[[ExampleSet, np.ndarray], Dataset]
    collate: Callable | None
    info: dict[str, Any] = field(default_factory=dict)


def build_model(
    train: ExampleSet, labels: np.ndarray, config: ModelConfig, *, progress: bool = True
) -> Workbench:
    """Train (or load) the model for ``train`` with the given (possibly noisy) labels.

    Args:
        train: The training examples.
        labels: ``(n,)`` labels to train on (the given ones, or with noise injected).
        config: How to obtain the model.
        progress: Show a progress bar while fine-tuning.
    """
    torch.manual_seed(config.seed)
    if train.kind == "features":
        if config.model is not None:
            raise UsageError(
                f"--model {config.model} is a text model, but {train.source} is a feature "
                "table (it has no text field); drop --model to train the built-in MLP"
            )
        epochs = 60 if config.epochs is None else config.epochs
        lr = 3e-3 if config.lr is None else config.lr
        model = train_mlp(
            train.features,
            labels,
            num_classes=train.num_classes,
            hidden=config.hidden,
            epochs=epochs,
            lr=lr,
            seed=config.seed,
        )
        info = {"kind": "mlp", "hidden": list(config.hidden), "epochs": epochs, "lr": lr}
        return Workbench(
            model.eval(), features_dataset, None, info
        )

    folder = config.model or str(default_text_model_dir())
    model, tokenizer = load_text_classifier(
        folder, num_labels=train.num_classes, adapter_dir=config.adapter
    )
    info: dict[str, Any] = {"kind": "text", "model": folder, "adapter": config.adapter}
    if config.adapter is None:
        epochs = 4 if config.epochs is None else config.epochs
        lr = 5e-4 if config.lr is None else config.lr
        model = finetune_lora(
            model,
            tokenizer,
            train.texts,
            labels,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            target_modules=config.lora_targets,
            epochs=epochs,
            lr=lr,
            batch_size=config.train_batch_size,
            max_length=config.max_length,
            seed=config.seed,
            progress=progress,
        )
        info.update(
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_targets=list(config.lora_targets),
            epochs=epochs,
            lr=lr,
            max_length=config.max_length,
        )

    def dataset(examples: ExampleSet, y: np.ndarray) -> Dataset:
        return text_dataset(tokenizer, examples.texts, y, max_length=config.max_length)

    return Workbench(model.eval(), dataset, collate_text(tokenizer), info)


def versions() -> dict[str, str]:
    """Versions of what produced a result."""
    import peft
    import transformers

    return {
        "hyperinf": hyperinf.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def to_json(value: Any) -> Any:
    """Make dataclasses, tuples, paths, tensors and numpy values JSON-ready."""
    if hasattr(value, "__dataclass_fields__"):
        return to_json(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor | np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(to_json(value), indent=2) + "\n")


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` only when everything in it is written.

    An existing ``out`` stays untouched if anything fails; on success it is replaced
    as a whole.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    with replace_folder(out) as staging:
        yield staging


def parse_list(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Split a comma-separated option into a tuple; ``None`` stays ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())
