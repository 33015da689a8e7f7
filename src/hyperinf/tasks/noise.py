"""Synthetic label noise for mislabeled-data detection experiments."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def flip_labels(
    labels: np.ndarray, rate: float, *, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip a fixed fraction of labels, each to a different class.

    Exactly ``round(rate * n)`` examples (Python's ``round``: halves go to the even number)
    are chosen uniformly without replacement; each chosen label becomes one of the other
    ``num_classes - 1`` classes, uniformly. The same ``seed`` gives the same flips.

    Args:
        labels: ``(n,)`` integer class ids in ``0..num_classes-1``.
        rate: fraction of labels to flip, in ``[0, 1)``.
        num_classes: number of classes ``C >= 2``.
        seed: seed of the random choices.

    Returns:
        ``(noisy_labels, flipped)``: ``(n,)`` int64 labels and an ``(n,)`` bool mask, true
        where the label was changed.

    Raises:
        ValueError: ``rate`` outside ``[0, 1)``, ``num_classes < 2``, or a label outside
            ``0..num_classes-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {labels.shape}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 to flip labels, got {num_classes}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"labels[{bad[0]}] = {labels[bad[0]]} is outside 0..{num_classes - 1} (num_classes)"
        )

    n = labels.shape[0]
    count = round(rate * n)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=count, replace=False)
    # An offset in 1..C-1 modulo C lands uniformly on every class except the original one.
    offsets = rng.integers(1, num_classes, size=count)

    noisy = labels.astype(np.int64, copy=True)
    noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    logger.info("flipped %d of %d labels (rate %.3g, seed %d)", count, n, rate, seed)
    return noisy, flipped
