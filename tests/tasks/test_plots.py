"""Figures (hyperinf.tasks.plots)."""

import numpy as np
import pytest

from hyperinf.tasks.metrics import detection_curve
from hyperinf.tasks.plots import plot_detection, plot_image_grid, plot_selection

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_detection_writes_png(tmp_path):
    flipped = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    curves = {
        "hyperinf": detection_curve(np.arange(10.0)[::-1], flipped),
        "loss": detection_curve(flipped.astype(float), flipped),
    }
    out = plot_detection(curves, 0.2, tmp_path / "figs" / "detection.png")
    assert _is_png(out)


def test_plot_detection_bad_input(tmp_path):
    path = tmp_path / "d.png"
    with pytest.raises(ValueError, match="curves is empty"):
        plot_detection({}, 0.2, path)
    with pytest.raises(ValueError, match="noise_rate"):
        plot_detection({"a": (np.array([0, 1.0]), np.array([0, 1.0]))}, 0.0, path)
    with pytest.raises(ValueError, match=r"curves\['a'\]: inspected and found"):
        plot_detection({"a": (np.array([0, 0.5, 1.0]), np.array([0, 1.0]))}, 0.2, path)
    with pytest.raises(ValueError, match=r"curves\['a'\]: values must lie in \[0, 1\]"):
        plot_detection({"a": (np.array([0, 1.0]), np.array([0, 2.0]))}, 0.2, path)
    assert not path.exists()


def test_plot_image_grid_writes_png(tmp_path):
    images = np.random.default_rng(0).random((10, 8, 8))
    out = plot_image_grid(
        images, list("0123456789"), [1] * 10, np.linspace(1, 0, 10), tmp_path / "grid.png",
        "top 10",
    )
    assert _is_png(out)
    single = plot_image_grid(images[:1], ["3"], ["5"], [0.5], tmp_path / "one.png", "one")
    assert _is_png(single)


def test_plot_image_grid_bad_input(tmp_path):
    images = np.zeros((3, 8, 8))
    with pytest.raises(ValueError, match=r"images must have shape \(k, h, w\)"):
        plot_image_grid(np.zeros((3, 64)), [1] * 3, [1] * 3, [0] * 3, tmp_path / "g.png", "t")
    with pytest.raises(ValueError, match="predicted has 2 entries, expected 3"):
        plot_image_grid(images, [1] * 3, [1] * 2, [0] * 3, tmp_path / "g.png", "t")


def test_plot_selection_writes_png(tmp_path):
    results = {
        "hyperinf": {0.05: [0.61], 0.2: [0.72], 0.4: [0.8]},
        "random": {0.05: [0.5, 0.55, 0.52], 0.2: [0.66, 0.7, 0.69], 0.4: [0.75, 0.78, 0.77]},
    }
    out = plot_selection(results, tmp_path / "sel.png", full_accuracy=[0.82, 0.84])
    assert _is_png(out)


def test_plot_selection_bad_input(tmp_path):
    with pytest.raises(ValueError, match="results is empty"):
        plot_selection({}, tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"results\['a'\]: fraction 1.5 is outside"):
        plot_selection({"a": {1.5: [0.5]}}, tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"results\['a'\]\[0.5\] holds no accuracy"):
        plot_selection({"a": {0.5: []}}, tmp_path / "s.png")
