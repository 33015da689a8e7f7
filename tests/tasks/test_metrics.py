"""Detection curve, area and found-at-fraction (hyperinf.tasks.metrics)."""

import numpy as np
import pytest

from hyperinf.tasks.metrics import detection_at, detection_auc, detection_curve


def _slow_curve(scores, flipped):
    """Inspect one example at a time: the highest score left, lowest index among ties."""
    left = list(range(len(scores)))
    found, curve = 0, [0.0]
    while left:
        best = max(left, key=lambda i: (scores[i], -i))
        left.remove(best)
        found += int(flipped[best])
        curve.append(found / sum(flipped))
    return np.array(curve)


def test_hand_made_ranking():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    flipped = np.array([True, False, True, False, False])
    inspected, found = detection_curve(scores, flipped)

    np.testing.assert_allclose(inspected, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(found, [0, 0.5, 0.5, 1, 1, 1])
    # Trapezoids of width 0.2: (0+.5)/2 + (.5+.5)/2 + (.5+1)/2 + 1 + 1, times 0.2.
    assert detection_auc(scores, flipped) == pytest.approx(0.7)


def test_perfect_ranking_area_is_one_minus_half_the_rate():
    flipped = np.zeros(20, dtype=bool)
    flipped[[3, 11, 17, 19]] = True
    scores = flipped.astype(float)
    assert detection_auc(scores, flipped) == pytest.approx(1 - 0.2 / 2)
    assert detection_auc(-scores, flipped) == pytest.approx(0.2 / 2)


def test_ties_are_broken_by_index():
    flipped = np.array([0, 0, 1, 0, 1])
    _, found = detection_curve(np.zeros(5), flipped)
    np.testing.assert_allclose(found, [0, 0, 0, 0.5, 0.5, 1])

    scores = np.array([1.0, 2.0, 2.0, 0.0, 2.0])
    _, found = detection_curve(scores, flipped)
    # Order 1, 2, 4 (the tied 2.0s by index), then 0, then 3.
    np.testing.assert_allclose(found, [0, 0, 0.5, 1, 1, 1])


def test_matches_slow_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 4, size=15).astype(float)  # many ties
        flipped = rng.random(15) < 0.3
        flipped[0] = True
        _, found = detection_curve(scores, flipped)
        np.testing.assert_allclose(found, _slow_curve(scores, flipped))


def test_random_ranking_area_is_about_one_half():
    rng = np.random.default_rng(1)
    flipped = np.zeros(200, dtype=bool)
    flipped[:40] = True
    areas = [detection_auc(rng.random(200), flipped) for _ in range(200)]
    assert np.mean(areas) == pytest.approx(0.5, abs=0.01)


def test_detection_at_floors_the_count():
    flipped = np.zeros(10, dtype=bool)
    flipped[[0, 2, 5, 9]] = True
    scores = -np.arange(10.0)  # inspected in index order
    result = detection_at(scores, flipped, fractions=(0.1, 0.25, 0.3, 0.5, 1.0, 0.0))
    # floor(f * 10) inspected: 1, 2, 3, 5, 10, 0 examples.
    assert result == {"0.1": 0.25, "0.25": 0.25, "0.3": 0.5, "0.5": 0.5, "1": 1.0, "0": 0.0}
    assert list(detection_at(scores, flipped)) == ["0.1", "0.2", "0.3", "0.5"]

    hundred = np.zeros(100, dtype=bool)
    hundred[28] = True
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 examples.
    assert detection_at(-np.arange(100.0), hundred, fractions=(0.29,)) == {"0.29": 1.0}


@pytest.mark.parametrize(
    ("scores", "flipped", "pattern"),
    [
        ([1.0, 2.0], [True], "scores has 2 entries but flipped has 1"),
        ([1.0, 2.0], [False, False], "no example"),
        ([], [], "empty"),
        ([1.0, np.nan], [True, False], r"scores\[1\] is NaN"),
        ([1.0, 2.0], [2, 0], "bool mask"),
    ],
)
def test_bad_inputs(scores, flipped, pattern):
    with pytest.raises(ValueError, match=pattern):
        detection_curve(np.array(scores), np.array(flipped))


def test_bad_fraction():
    with pytest.raises(ValueError, match="fractions must be in"):
        detection_at(np.zeros(3), np.array([1, 0, 0]), fractions=(1.5,))
