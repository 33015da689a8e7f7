"""CurvatureSet: many blocks updated together, merged, validated."""

import math

import pytest
import torch

from hyperinf.curvature import (
    BlockNameError,
    BlockShapeError,
    CurvatureSet,
    EmptyCurvatureError,
    FIMTooLargeError,
    GFIMAccumulator,
    IncompatibleCurvatureError,
    NonFiniteGradientError,
)

SHAPES = {"q.lora_A": (2, 5), "q.lora_B": (2, 3), "head": (4, 3)}
N = 9
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def make_grads(rng: torch.Generator, n: int = N) -> dict[str, torch.Tensor]:
    return {name: torch.randn(n, r, d, generator=rng) for name, (r, d) in SHAPES.items()}


def batches(grads: dict[str, torch.Tensor], start: int, stop: int, size: int):
    for first in range(start, stop, size):
        last = min(first + size, stop)
        yield first, {name: g[first:last] for name, g in grads.items()}


def filled(grads, start=0, stop=N, size=4, **kwargs) -> CurvatureSet:
    curvature = CurvatureSet(SHAPES, **kwargs)
    for offset, batch in batches(grads, start, stop, size):
        curvature.update(batch, offset=offset)
    return curvature


def test_every_block_matches_loop(rng, reference):
    grads = make_grads(rng)
    curvature = filled(grads, kinds=("gfim", "fim"))

    assert curvature.n == N
    assert curvature.names == tuple(SHAPES)
    for name in SHAPES:
        torch.testing.assert_close(curvature[name]["gfim"].matrix(), reference.gfim(grads[name]),
                                   **TIGHT)
        torch.testing.assert_close(curvature.accumulator(name, "fim").matrix(),
                                   reference.fim(grads[name]), **TIGHT)
        expected = reference.damping(grads[name], 0.3)
        assert math.isclose(curvature.damping(name, 0.3), expected, rel_tol=1e-12)
        assert math.isclose(curvature.dampings(0.3)[name], expected, rel_tol=1e-12)


def test_default_kinds_are_gfim_only(rng):
    curvature = filled(make_grads(rng))
    assert all(curvature.kinds(name) == ("gfim",) for name in curvature)
    with pytest.raises(BlockNameError, match="'head' accumulates \\('gfim',\\), not 'fim'"):
        curvature.accumulator("head", "fim")


def test_kinds_by_block(rng, reference):
    grads = make_grads(rng)
    curvature = filled(grads, kinds={"head": ["fim"], "q.lora_B": "fim"})

    assert curvature.kinds("head") == ("fim",)
    assert curvature.kinds("q.lora_B") == ("fim",)
    assert curvature.kinds("q.lora_A") == ("gfim",)
    torch.testing.assert_close(curvature.accumulator("head", "fim").matrix(),
                               reference.fim(grads["head"]), **TIGHT)


def test_kinds_are_normalised():
    curvature = CurvatureSet(SHAPES, ["fim", "gfim", "fim"])
    assert curvature.kinds("head") == ("gfim", "fim")


@pytest.mark.parametrize("kinds", [(), ("kfac",), "hessian", {"head": ()}])
def test_rejects_unknown_kinds(kinds):
    with pytest.raises(ValueError, match="must be one or more of"):
        CurvatureSet(SHAPES, kinds)


def test_rejects_kinds_for_unknown_block():
    with pytest.raises(BlockNameError, match="'nope'"):
        CurvatureSet(SHAPES, {"nope": "fim"})


def test_refuses_fim_of_large_block_by_name():
    shapes = {"small": (2, 3), "big.lora_A": (8, 1024)}
    with pytest.raises(FIMTooLargeError, match=r"'big.lora_A'.*8192.*GFIM"):
        CurvatureSet(shapes, ("gfim", "fim"))
    CurvatureSet(shapes, {"small": ("gfim", "fim")})
    CurvatureSet(shapes, ("gfim", "fim"), max_fim_dim=8192)


@pytest.mark.parametrize(
    "shapes, match",
    [
        ({}, "non-empty mapping"),
        ([("a", (1, 2))], "non-empty mapping"),
        ({"": (1, 2)}, "non-empty strings"),
        ({"a": (1, 2, 3)}, r"shapes\['a'\] must be a pair"),
        ({"a": (0, 2)}, r"shapes\['a'\] r must be a positive integer"),
        ({"a": (2, 1.5)}, r"shapes\['a'\] d must be a positive integer"),
    ],
)
def test_rejects_bad_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        CurvatureSet(shapes)


def test_batching_does_not_matter(rng):
    grads = make_grads(rng)
    one = filled(grads, size=N, kinds=("gfim", "fim"))
    many = filled(grads, size=2, kinds=("gfim", "fim"))
    for name in SHAPES:
        for kind in ("gfim", "fim"):
            torch.testing.assert_close(many[name][kind].matrix(), one[name][kind].matrix(),
                                       **TIGHT)
        assert math.isclose(many.damping(name), one.damping(name), rel_tol=1e-13)


def test_merge_of_split_equals_whole(rng):
    grads = make_grads(rng)
    whole = filled(grads, kinds=("gfim", "fim"))
    left = filled(grads, 0, 3, kinds=("gfim", "fim"))
    right = filled(grads, 3, N, kinds=("gfim", "fim"))

    merged = left.merge(right)
    assert merged.n == N and left.n == 3 and right.n == N - 3
    for name in SHAPES:
        for kind in ("gfim", "fim"):
            torch.testing.assert_close(merged[name][kind].matrix(), whole[name][kind].matrix(),
                                       **TIGHT)
        assert math.isclose(merged.damping(name), whole.damping(name), rel_tol=1e-13)


def test_merge_ignores_block_order(rng):
    grads = make_grads(rng)
    left = filled(grads, 0, 4)
    reordered = CurvatureSet(dict(reversed(SHAPES.items())))
    for offset, batch in batches(grads, 4, N, 3):
        reordered.update(batch, offset=offset)

    merged = left.merge(reordered)
    assert merged.names == tuple(SHAPES)
    whole = filled(grads)
    torch.testing.assert_close(merged["head"]["gfim"].matrix(), whole["head"]["gfim"].matrix(),
                               **TIGHT)


@pytest.mark.parametrize(
    "other",
    [
        CurvatureSet({"q.lora_A": (2, 5), "q.lora_B": (2, 3)}),
        CurvatureSet({**SHAPES, "head": (4, 2)}),
        CurvatureSet(SHAPES, ("gfim", "fim")),
        CurvatureSet(SHAPES, dtype=torch.float32),
        GFIMAccumulator(2, 5),
    ],
)
def test_merge_rejects_different_structure(other):
    with pytest.raises(IncompatibleCurvatureError, match="cannot merge"):
        CurvatureSet(SHAPES).merge(other)


def test_update_rejects_missing_block(rng):
    grads = make_grads(rng)
    del grads["q.lora_B"]
    with pytest.raises(BlockNameError, match="lacks block.*'q.lora_B'"):
        CurvatureSet(SHAPES).update(grads)


def test_update_rejects_extra_block(rng):
    grads = make_grads(rng)
    grads["v.lora_A"] = torch.zeros(N, 2, 5)
    with pytest.raises(BlockNameError, match="'v.lora_A' that this CurvatureSet does not know"):
        CurvatureSet(SHAPES).update(grads)


def test_update_rejects_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        CurvatureSet(SHAPES).update([torch.zeros(1, 2, 5)])


def test_update_rejects_wrong_shape_naming_block(rng):
    grads = make_grads(rng)
    grads["q.lora_B"] = torch.zeros(N, 3, 2)
    with pytest.raises(BlockShapeError, match=r"'q.lora_B'.*\(b, 2, 3\), got \(9, 3, 2\)"):
        CurvatureSet(SHAPES).update(grads)


def test_update_rejects_unequal_batch_sizes(rng):
    grads = make_grads(rng)
    grads["head"] = grads["head"][:5]
    with pytest.raises(BlockShapeError, match="'head' has a batch of 5.*'q.lora_A' has 9"):
        CurvatureSet(SHAPES).update(grads)


def test_rejected_update_changes_no_block(rng):
    grads = make_grads(rng)
    curvature = filled(grads)
    before = {name: curvature[name]["gfim"].matrix() for name in SHAPES}

    bad = make_grads(rng, n=4)
    bad["head"][2, 3, 1] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"'head'.*example 42 \(index 2") as info:
        curvature.update(bad, offset=40)
    assert (info.value.block, info.value.index) == ("head", 42)

    assert curvature.n == N
    for name in SHAPES:
        assert torch.equal(curvature[name]["gfim"].matrix(), before[name])


def test_unknown_block_lookup_is_a_key_error():
    curvature = CurvatureSet(SHAPES)
    with pytest.raises(KeyError, match="unknown block 'v'"):
        curvature["v"]
    with pytest.raises(BlockNameError):
        curvature.damping("v")
    assert "head" in curvature and "v" not in curvature
    assert len(curvature) == 3 and list(curvature) == list(SHAPES)


def test_accessors_are_read_only():
    curvature = CurvatureSet(SHAPES)
    with pytest.raises(TypeError):
        curvature["head"]["fim"] = None
    curvature.shapes["head"] = (1, 1)
    assert curvature.shapes["head"] == (4, 3)


def test_empty_set_refuses_damping():
    with pytest.raises(EmptyCurvatureError):
        CurvatureSet(SHAPES).dampings()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dtype": torch.int64}, "dtype"),
        ({"max_fim_dim": 0}, "max_fim_dim"),
    ],
)
def test_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurvatureSet(SHAPES, **kwargs)
