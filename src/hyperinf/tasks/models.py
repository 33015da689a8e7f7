"""The model of feature tables: a standardising MLP, its dataset and its trainer.

Batches of feature sets are ``(x, y)`` tuples, ``x`` float32 ``(b, f)`` and ``y`` int64
``(b,)``; the trainable blocks are the weights of the MLP's ``nn.Linear`` layers. Text models
live in :mod:`hyperinf.tasks.finetune`.

Trainers are seeded end to end (initialisation, shuffling, dropout) and leave torch's global
random state untouched: the same seed on the same machine gives the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)


class MLPClassifier(nn.Module):
    """Standardise features, then a stack of Linear/ReLU layers, then class logits.

    The standardisation ``(x - mean) / std`` is stored as buffers (not trained), so the
    trainable blocks are exactly the ``nn.Linear`` layers in ``layers``.

    Args:
        in_features: number of features ``f``.
        num_classes: number of classes ``C``.
        hidden: sizes of the hidden layers (empty: a linear classifier).
        mean: ``(f,)`` feature means; default zeros.
        std: ``(f,)`` feature standard deviations; zeros are replaced by one (constant
            features); default ones.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64,),
        mean: torch.Tensor | np.ndarray | None = None,
        std: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(
                f"need in_features >= 1 and num_classes >= 2, got {in_features}, {num_classes}"
            )
        mean_t = torch.zeros(in_features) if mean is None else torch.as_tensor(mean)
        std_t = torch.ones(in_features) if std is None else torch.as_tensor(std)
        if mean_t.shape != (in_features,) or std_t.shape != (in_features,):
            raise ValueError(f"mean and std must have shape ({in_features},)")
        std_t = torch.where(std_t > 0, std_t, torch.ones_like(std_t))
        self.register_buffer("mean", mean_t.to(torch.float32).clone())
        self.register_buffer("std", std_t.to(torch.float32).clone())

        sizes = [in_features, *hidden, num_classes]
        layers: list[nn.Module] = []
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if k < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.num_classes = num_classes
        self.hidden = tuple(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, C)`` of float features ``x`` ``(b, f)``."""
        return self.layers((x - self.mean) / self.std)


class FeatureDataset(Dataset):
    """``(x, y)`` pairs: ``x`` float32 ``(f,)``, ``y`` int64 scalar."""

    def __init__(self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        self.features = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if self.features.ndim != 2 or self.labels.shape != (self.features.shape[0],):
            raise ValueError(
                f"features must be (n, f) and labels (n,); got {tuple(self.features.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        self.collate_fn = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.labels[i]


def features_dataset(examples: Any, labels: np.ndarray | None = None) -> FeatureDataset:
    """A dataset of ``(x, y)`` pairs from a feature :class:`~hyperinf.tasks.data.ExampleSet`.

    Args:
        examples: an ExampleSet with ``kind == "features"``.
        labels: ``(n,)`` labels to use instead of ``examples.labels`` (e.g. noisy ones).
    """
    if examples.kind != "features":
        raise ValueError(f"{examples.source}: a {examples.kind} set has no features")
    return FeatureDataset(examples.features, examples.labels if labels is None else labels)


def train_mlp(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    hidden: Sequence[int] = (64,),
    epochs: int = 30,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
) -> MLPClassifier:
    """Train an :class:`MLPClassifier` with Adam and cross-entropy.

    The standardisation is fitted on ``features``. The defaults reach about 0.975 validation
    accuracy on the built-in digits set in about a second on one CPU core.

    Args:
        features: ``(n, f)`` training features.
        labels: ``(n,)`` class ids.
        num_classes: number of classes ``C``; default ``labels.max() + 1``. Pass it when
            ``labels`` may lack the last class (a subset, noisy labels).
        hidden: hidden layer sizes.
        epochs: passes over the training set.
        lr: Adam learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
        batch_size: examples per step.
        seed: seed of the initialisation and the shuffling.

    Returns:
        The trained model, in eval mode.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    dataset = FeatureDataset(features, labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(
            features.shape[1], num_classes, hidden,
            mean=features.mean(axis=0), std=features.std(axis=0),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        loader = shuffled_loader(dataset, batch_size, seed)
        model.train()
        for epoch in range(epochs):
            total = 0.0
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * y.shape[0]
            logger.debug("mlp epoch %d: train loss %.4f", epoch, total / len(dataset))
    logger.info("trained MLP %s on %d examples, final train loss %.4f",
                model.hidden, len(dataset), total / len(dataset))
    return model.eval()


def shuffled_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    """A loader reshuffling every epoch from its own seeded generator (not the global one).

    Uses the dataset's ``collate_fn`` attribute when it has one.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator,
        collate_fn=getattr(dataset, "collate_fn", None),
    )
