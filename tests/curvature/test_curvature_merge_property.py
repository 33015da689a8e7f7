"""Property: merging the accumulators of any split of a dataset gives the whole's."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperinf.curvature import CurvatureSet

SHAPES = {"a": (2, 3), "b": (1, 4)}
N = 12
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def fill(grads: dict[str, torch.Tensor], start: int, stop: int, batch: int) -> CurvatureSet:
    curvature = CurvatureSet(SHAPES, ("gfim", "fim"))
    for first in range(start, stop, batch):
        last = min(first + batch, stop)
        curvature.update({name: g[first:last] for name, g in grads.items()}, offset=first)
    return curvature


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=N), max_size=4),
    batch=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**16),
    scale=st.sampled_from([1e-4, 1.0, 1e3]),
)
def test_merge_of_any_split_equals_whole(cuts, batch, seed, scale):
    rng = torch.Generator().manual_seed(seed)
    grads = {name: torch.randn(N, r, d, generator=rng) * scale for name, (r, d) in SHAPES.items()}
    whole = fill(grads, 0, N, N)

    bounds = [0, *sorted(cuts), N]
    parts = [fill(grads, lo, hi, batch) for lo, hi in zip(bounds, bounds[1:])]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)

    assert merged.n == whole.n == N
    for name in SHAPES:
        for kind in ("gfim", "fim"):
            torch.testing.assert_close(merged[name][kind].matrix(), whole[name][kind].matrix(),
                                       **TIGHT)
        assert math.isclose(merged.damping(name), whole.damping(name), rel_tol=1e-12)
