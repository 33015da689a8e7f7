"""Synthetic label noise (hyperinf.tasks.noise)."""

import numpy as np
import pytest

from hyperinf.tasks.noise import flip_labels


def test_flips_exactly_round_rate_n_labels_to_other_classes():
    labels = np.arange(103) % 4
    noisy, flipped = flip_labels(labels, 0.2, num_classes=4, seed=0)

    assert flipped.dtype == bool and noisy.dtype == np.int64
    assert flipped.sum() == round(0.2 * 103) == 21
    np.testing.assert_array_equal(noisy != labels, flipped)
    assert noisy.min() >= 0 and noisy.max() <= 3
    np.testing.assert_array_equal(labels, np.arange(103) % 4)  # the input is not modified


def test_rounding_follows_python_round():
    labels = np.zeros(10, dtype=np.int64)
    assert flip_labels(labels, 0.25, num_classes=2, seed=0)[1].sum() == round(2.5) == 2
    assert flip_labels(labels, 0.35, num_classes=2, seed=0)[1].sum() == round(3.5) == 4
    assert flip_labels(labels, 0.0, num_classes=2, seed=0)[1].sum() == 0


def test_seeded_and_different_seeds_differ():
    labels = np.arange(50) % 5
    a = flip_labels(labels, 0.3, num_classes=5, seed=7)
    b = flip_labels(labels, 0.3, num_classes=5, seed=7)
    c = flip_labels(labels, 0.3, num_classes=5, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_choices_are_uniform():
    # Every example is flipped equally often, and to each other class equally often.
    n, classes, trials = 10, 3, 3000
    labels = np.zeros(n, dtype=np.int64)
    picked = np.zeros(n)
    targets = np.zeros(classes)
    for seed in range(trials):
        noisy, flipped = flip_labels(labels, 0.3, num_classes=classes, seed=seed)
        picked += flipped
        targets += np.bincount(noisy[flipped], minlength=classes)

    # Expected 900 per example (sd about 25) and 4500 per target class (sd about 39).
    np.testing.assert_allclose(picked, trials * 0.3, atol=120)
    assert targets[0] == 0
    np.testing.assert_allclose(targets[1:], trials * 3 / 2, atol=200)


@pytest.mark.parametrize(
    ("labels", "rate", "classes", "pattern"),
    [
        ([0, 1], 1.0, 2, "rate must be in"),
        ([0, 1], -0.1, 2, "rate must be in"),
        ([0, 0], 0.5, 1, "num_classes must be at least 2"),
        ([0, 3], 0.5, 3, r"labels\[1\] = 3 is outside 0..2"),
        ([[0, 1]], 0.5, 2, "shape"),
    ],
)
def test_bad_arguments(labels, rate, classes, pattern):
    with pytest.raises(ValueError, match=pattern):
        flip_labels(np.array(labels), rate, num_classes=classes, seed=0)
