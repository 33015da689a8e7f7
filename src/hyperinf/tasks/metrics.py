"""How well a ranking of training examples finds the mislabeled ones.

Scores follow the influence sign convention: a large positive score marks a harmful example,
so examples are inspected in order of score, highest first. Ties are broken by position,
lower index first, so every ranking (and every number below) is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def detection_order(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` ``(n,)`` by score descending, ties by index ascending."""
    scores = np.asarray(scores, dtype=np.float64)
    # lexsort sorts by its last key first, and stably, so equal scores keep index order.
    return np.lexsort((np.arange(scores.shape[0]), -scores))


def detection_curve(scores: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of flipped examples found against fraction of training data inspected.

    Args:
        scores: ``(n,)`` scores, highest = most suspicious (inspected first).
        flipped: ``(n,)`` bool (or 0/1), true where the label was flipped.

    Returns:
        ``(inspected, found)``, both ``(n + 1,)``: after inspecting the top ``k`` examples,
        ``inspected[k] = k / n`` and ``found[k]`` = flipped among them / all flipped.
        Both start at 0 and end at 1.

    Raises:
        ValueError: mismatched or empty inputs, NaN scores, or no flipped example.
    """
    scores, flipped = _check(scores, flipped)
    n = scores.shape[0]
    hits = flipped[detection_order(scores)].astype(np.float64)
    found = np.concatenate([[0.0], np.cumsum(hits)]) / hits.sum()
    inspected = np.arange(n + 1, dtype=np.float64) / n
    return inspected, found


def detection_auc(scores: np.ndarray, flipped: np.ndarray) -> float:
    """Area under :func:`detection_curve` (trapezoid rule).

    A random ranking scores about 0.5; the perfect one ``1 - rate / 2``, with ``rate`` the
    fraction of flipped examples.
    """
    inspected, found = detection_curve(scores, flipped)
    return float(np.trapezoid(found, inspected))


def detection_at(
    scores: np.ndarray,
    flipped: np.ndarray,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
) -> dict[str, float]:
    """Fraction of flipped examples found after inspecting ``floor(f * n)`` examples.

    Args:
        scores: ``(n,)`` scores, highest first.
        flipped: ``(n,)`` bool flip mask.
        fractions: fractions ``f`` in ``[0, 1]`` of the training set inspected.

    Returns:
        ``{f"{f:g}": found}``, e.g. ``{"0.1": 0.31, ...}``.
    """
    _, found = detection_curve(scores, flipped)
    n = found.shape[0] - 1
    result = {}
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions must be in [0, 1], got {f}")
        # The tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 at 29.
        k = min(n, math.floor(f * n + 1e-9))
        result[f"{f:g}"] = float(found[k])
    return result


def _check(scores: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    flipped = np.asarray(flipped)
    if scores.ndim != 1 or flipped.ndim != 1:
        raise ValueError(
            f"scores and flipped must be 1-D, got shapes {scores.shape} and {flipped.shape}"
        )
    if scores.shape != flipped.shape:
        raise ValueError(
            f"scores has {scores.shape[0]} entries but flipped has {flipped.shape[0]}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores is empty")
    if not np.isin(flipped, (0, 1)).all():
        raise ValueError("flipped must be a bool mask (or 0/1)")
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"scores[{nan[0]}] is NaN")
    flipped = flipped.astype(bool)
    if not flipped.any():
        raise ValueError("flipped marks no example: the detection curve is undefined")
    return scores, flipped
