"""Figures of the tasks: detection curves, suspicious images, data-selection accuracy.

Figures are drawn on the Agg canvas without pyplot, so nothing global is touched and no
display is needed. The file format follows the suffix of ``path`` (``.png``, ``.pdf``, ...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def plot_detection(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    noise_rate: float,
    path: str | Path,
    *,
    title: str = "Mislabeled-example detection",
) -> Path:
    """Fraction of flipped examples found against fraction inspected, one line per method.

    A random ranking (``y = x``) and the perfect one (``y = min(x / noise_rate, 1)``) are
    drawn for reference.

    Args:
        curves: method name -> ``(inspected, found)`` from
            :func:`~hyperinf.tasks.metrics.detection_curve`, each ``(n + 1,)``.
        noise_rate: fraction of flipped labels, in ``(0, 1)``.
        path: output image file.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: no curve, mismatched or out-of-range curve values, or a bad noise_rate.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    if not 0.0 < noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in (0, 1), got {noise_rate}")
    checked = {name: _check_curve(name, *curve) for name, curve in curves.items()}

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    x = np.linspace(0.0, 1.0, 201)
    ax.plot(x, x, color="grey", linestyle=":", label="random ranking")
    perfect = np.minimum(x / noise_rate, 1.0)
    ax.plot(x, perfect, color="black", linestyle="--", label="perfect ranking")
    colours = matplotlib.colormaps["tab20"].colors
    for k, (name, (inspected, found)) in enumerate(checked.items()):
        # Self-influence rankings dashed, so that they read apart from the query rankings.
        style = "--" if name.startswith("self:") else "-"
        ax.plot(inspected, found, label=name, color=colours[k % 20], linestyle=style)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), title=title,
           xlabel="fraction of training data inspected", ylabel="fraction of flipped found")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_image_grid(
    images: np.ndarray,
    given: Sequence,
    predicted: Sequence,
    scores: Sequence[float],
    path: str | Path,
    title: str = "Most suspicious training examples",
    *,
    columns: int = 8,
) -> Path:
    """A grid of images, each captioned with its given and predicted label and its score.

    Args:
        images: ``(k, h, w)`` grey-scale images, e.g. the top-``k`` by score.
        given: ``k`` labels in the training set (possibly flipped).
        predicted: ``k`` labels predicted by the model.
        scores: ``k`` scores (large positive = harmful).
        path: output image file.
        title: figure title.
        columns: images per row.

    Returns:
        ``path``.

    Raises:
        ValueError: images not ``(k, h, w)`` with ``k >= 1``, or label/score lists whose
            length is not ``k``.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (k, h, w) with k >= 1, got {images.shape}")
    k = images.shape[0]
    for name, values in (("given", given), ("predicted", predicted), ("scores", scores)):
        if len(values) != k:
            raise ValueError(f"{name} has {len(values)} entries, expected {k} (one per image)")
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")

    cols = min(columns, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(1.4 * cols, 2.0 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= k:
            continue
        ax.imshow(images[i], cmap="gray_r", interpolation="nearest")
        ax.set_title(f"given {given[i]}\npred {predicted[i]}\nscore {scores[i]:.3g}", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_selection(
    results: Mapping[str, Mapping[float, Sequence[float]]],
    path: str | Path,
    *,
    full_accuracy: float | Sequence[float] | None = None,
    title: str = "Validation accuracy of the selected subset",
) -> Path:
    """Validation accuracy of training subsets against the fraction kept, per selection.

    Each selection (e.g. ``"hyperinf"``, ``"random"``) is drawn as its mean over the given
    runs (seeds) with a band from the smallest to the largest; the accuracy of training on
    the full set is a horizontal line (and band).

    Args:
        results: selection name -> {fraction kept -> accuracies, one per run}.
        path: output image file.
        full_accuracy: accuracy (or accuracies over runs) of training on the full set.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: no results, a fraction outside ``(0, 1]``, or an empty accuracy list.
    """
    if not results:
        raise ValueError("results is empty: nothing to plot")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, by_fraction in results.items():
        fractions, low, mean, high = _summarise(name, by_fraction)
        line = ax.plot(fractions, mean, marker="o", label=name)[0]
        if np.any(high > low):
            ax.fill_between(fractions, low, high, color=line.get_color(), alpha=0.2)
    if full_accuracy is not None:
        full = np.atleast_1d(np.asarray(full_accuracy, dtype=np.float64))
        if full.size == 0:
            raise ValueError("full_accuracy is empty")
        ax.axhline(full.mean(), color="black", linestyle="--", label="full set")
        if full.max() > full.min():
            ax.axhspan(full.min(), full.max(), color="black", alpha=0.1)
    ax.set(title=title, xlabel="fraction of training data kept", ylabel="validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _summarise(
    name: str, by_fraction: Mapping[float, Sequence[float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fractions in order, with the min, mean and max accuracy of the runs at each."""
    if not by_fraction:
        raise ValueError(f"results[{name!r}] holds no fraction")
    fractions, low, mean, high = [], [], [], []
    for fraction in sorted(by_fraction):
        values = np.asarray(by_fraction[fraction], dtype=np.float64).ravel()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"results[{name!r}]: fraction {fraction} is outside (0, 1]")
        if values.size == 0:
            raise ValueError(f"results[{name!r}][{fraction}] holds no accuracy")
        fractions.append(fraction)
        low.append(values.min())
        mean.append(values.mean())
        high.append(values.max())
    return tuple(np.asarray(v, dtype=np.float64) for v in (fractions, low, mean, high))


def _check_curve(
    name: str, inspected: np.ndarray, found: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    inspected = np.asarray(inspected, dtype=np.float64)
    found = np.asarray(found, dtype=np.float64)
    if inspected.ndim != 1 or inspected.shape != found.shape or inspected.size < 2:
        raise ValueError(
            f"curves[{name!r}]: inspected and found must be 1-D of one length >= 2, got "
            f"{inspected.shape} and {found.shape}"
        )
    both = np.concatenate([inspected, found])
    if not np.all(np.isfinite(both)) or both.min() < 0.0 or both.max() > 1.0:
        raise ValueError(f"curves[{name!r}]: values must lie in [0, 1]")
    return inspected, found


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    logger.info("wrote figure %s", path)
    return path
