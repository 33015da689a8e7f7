"""Block accumulators against explicit loops over training examples."""

import logging
import math

import pytest
import torch

from hyperinf.curvature import (
    BlockShapeError,
    CurvatureError,
    EmptyCurvatureError,
    FIMAccumulator,
    FIMTooLargeError,
    GFIMAccumulator,
    IncompatibleCurvatureError,
    NonFiniteGradientError,
    gfim_from_fim,
    make_accumulator,
)

R, D, N = 3, 4, 11
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def grads_fp32(rng: torch.Generator, n: int = N, r: int = R, d: int = D) -> torch.Tensor:
    # Rows of different scale, so that the GFIM and FIM are not multiples of the identity.
    scale = torch.linspace(0.5, 2.0, d)
    return torch.randn(n, r, d, generator=rng) * scale


def filled(cls, grads: torch.Tensor, batch: int = 4, **kwargs):
    acc = cls(grads.shape[1], grads.shape[2], **kwargs)
    for start in range(0, grads.shape[0], batch):
        acc.update(grads[start:start + batch], offset=start)
    return acc


@pytest.mark.parametrize("cls, ref_name", [(GFIMAccumulator, "gfim"), (FIMAccumulator, "fim")])
def test_matrix_matches_loop(cls, ref_name, rng, reference):
    grads = grads_fp32(rng)
    acc = filled(cls, grads)

    expected = getattr(reference, ref_name)(grads)
    mat = acc.matrix()
    assert mat.dtype == torch.float64
    assert mat.shape == expected.shape
    torch.testing.assert_close(mat, expected, **TIGHT)
    assert torch.equal(mat, mat.T)
    assert acc.n == N


@pytest.mark.parametrize("cls", [GFIMAccumulator, FIMAccumulator])
@pytest.mark.parametrize("c", [0.1, 1.0, 3e-4])
def test_damping_matches_loop(cls, c, rng, reference):
    grads = grads_fp32(rng)
    acc = filled(cls, grads)

    expected = reference.damping(grads, c)
    assert math.isclose(acc.damping(c), expected, rel_tol=1e-12)
    eye = torch.eye(acc.matrix_dim, dtype=torch.float64)
    torch.testing.assert_close(acc.damped(c), acc.matrix() + expected * eye, **TIGHT)


def test_default_damping_scale_is_one_tenth(rng, reference):
    grads = grads_fp32(rng)
    acc = filled(GFIMAccumulator, grads)
    assert math.isclose(acc.damping(), reference.damping(grads, 0.1), rel_tol=1e-12)


def test_damping_follows_trace_of_both_normalisations(rng):
    grads = grads_fp32(rng)
    gfim, fim = filled(GFIMAccumulator, grads), filled(FIMAccumulator, grads)

    c = 0.1
    assert math.isclose(gfim.damping(c), c * float(gfim.matrix().trace()) / D, rel_tol=1e-12)
    assert math.isclose(fim.damping(c), c * float(fim.matrix().trace()) / (R * D), rel_tol=1e-12)
    assert math.isclose(gfim.damping(c), fim.damping(c), rel_tol=1e-12)


@pytest.mark.parametrize("cls", [GFIMAccumulator, FIMAccumulator])
def test_batching_does_not_matter(cls, rng):
    grads = grads_fp32(rng)
    whole = cls(R, D)
    whole.update(grads)
    pieces = cls(R, D)
    for start, stop in [(0, 1), (1, 1), (1, 5), (5, 6), (6, N)]:
        pieces.update(grads[start:stop])

    torch.testing.assert_close(pieces.matrix(), whole.matrix(), **TIGHT)
    assert math.isclose(pieces.damping(), whole.damping(), rel_tol=1e-13)
    assert pieces.n == whole.n == N


@pytest.mark.parametrize("cls", [GFIMAccumulator, FIMAccumulator])
def test_merge_of_split_equals_whole(cls, rng):
    grads = grads_fp32(rng)
    whole = filled(cls, grads, name="q")
    left, right = filled(cls, grads[:4], name="q"), filled(cls, grads[4:], name="q")
    left_matrix = left.matrix()

    merged = left.merge(right)
    torch.testing.assert_close(merged.matrix(), whole.matrix(), **TIGHT)
    assert math.isclose(merged.damping(), whole.damping(), rel_tol=1e-13)
    assert merged.n == N
    # Merging must not change its inputs.
    assert left.n == 4 and right.n == N - 4
    assert torch.equal(left.matrix(), left_matrix)


def test_merge_with_empty_is_identity(rng):
    grads = grads_fp32(rng)
    acc = filled(GFIMAccumulator, grads)
    merged = acc.merge(GFIMAccumulator(R, D))
    assert torch.equal(merged.matrix(), acc.matrix())
    assert merged.n == acc.n


def test_fp32_gradients_accumulate_in_float64(rng, reference):
    # Many tiny fp32 gradients: float64 accumulation must match the float64 loop.
    grads = (grads_fp32(rng, n=64) * 1e-3).float()
    acc = GFIMAccumulator(R, D)
    acc.update(grads)
    assert acc._sum.dtype == torch.float64
    torch.testing.assert_close(acc.matrix(), reference.gfim(grads), **TIGHT)


def test_float32_accumulator(rng, reference):
    grads = grads_fp32(rng)
    acc = filled(GFIMAccumulator, grads, dtype=torch.float32)
    assert acc.matrix().dtype == torch.float32
    torch.testing.assert_close(acc.matrix().double(), reference.gfim(grads), rtol=1e-5, atol=1e-6)


def test_gfim_from_fim_averages_diagonal_blocks(rng, reference):
    grads = grads_fp32(rng)
    fim = filled(FIMAccumulator, grads).matrix()
    gfim = filled(GFIMAccumulator, grads).matrix()

    torch.testing.assert_close(gfim_from_fim(fim, R, D), gfim, **TIGHT)
    torch.testing.assert_close(gfim_from_fim(reference.fim(grads), R, D), reference.gfim(grads),
                               **TIGHT)
    by_loop = sum(fim[k * D:(k + 1) * D, k * D:(k + 1) * D] for k in range(R)) / R
    torch.testing.assert_close(gfim_from_fim(fim, R, D), by_loop, **TIGHT)


def test_gfim_from_fim_keeps_leading_dimensions(rng):
    fims = torch.randn(2, 5, R * D, R * D, generator=rng, dtype=torch.float64)
    out = gfim_from_fim(fims, R, D)
    assert out.shape == (2, 5, D, D)
    torch.testing.assert_close(out[1, 3], gfim_from_fim(fims[1, 3], R, D), **TIGHT)


@pytest.mark.parametrize("shape", [(R * D,), (R * D, R * D + 1), (D, D)])
def test_gfim_from_fim_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match="fim must have shape"):
        gfim_from_fim(torch.zeros(shape), R, D)


def test_gfim_from_fim_rejects_bad_r():
    with pytest.raises(ValueError, match="r must be a positive integer"):
        gfim_from_fim(torch.zeros(4, 4), 0, 4)


def test_fim_size_refusal_names_block_and_size():
    with pytest.raises(FIMTooLargeError, match=r"'big'.*r\*d = 16\*512 = 8192.*GFIM"):
        FIMAccumulator(16, 512, name="big")
    with pytest.raises(FIMTooLargeError, match="max_fim_dim = 11"):
        FIMAccumulator(R, D, max_fim_dim=11)
    assert FIMAccumulator(R, D, max_fim_dim=R * D).matrix_dim == R * D
    assert FIMAccumulator(64, 64).matrix_dim == 4096


def test_fim_size_refusal_is_a_value_error():
    assert issubclass(FIMTooLargeError, ValueError)
    assert issubclass(FIMTooLargeError, CurvatureError)


@pytest.mark.parametrize(
    "shape", [(N, R, D + 1), (N, R + 1, D), (R, D), (N, 1, R, D), (N, D, R)]
)
def test_update_rejects_wrong_shape(shape):
    acc = GFIMAccumulator(R, D, name="layer.q.lora_A")
    with pytest.raises(BlockShapeError, match=rf"'layer.q.lora_A'.*\(b, {R}, {D}\).*{shape}"):
        acc.update(torch.zeros(shape))


def test_update_rejects_integer_gradients():
    with pytest.raises(BlockShapeError, match="floating point"):
        GFIMAccumulator(R, D).update(torch.zeros(2, R, D, dtype=torch.int64))


def test_update_rejects_non_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        GFIMAccumulator(R, D).update([[0.0] * D] * R)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_update_rejects_non_finite_and_names_dataset_index(bad, rng):
    grads = grads_fp32(rng, n=6)
    grads[4, 1, 2] = bad
    grads[5, 0, 0] = bad
    acc = FIMAccumulator(R, D, name="v")
    with pytest.raises(NonFiniteGradientError, match=r"'v'.*example 104 \(index 4") as info:
        acc.update(grads, offset=100)
    assert info.value.index == 104
    assert info.value.block == "v"
    assert acc.n == 0 and float(acc.sq_norm_sum) == 0.0


def test_update_rejects_overflow_in_accumulation_dtype():
    grads = torch.zeros(3, R, D, dtype=torch.float64)
    grads[2, 0, 0] = 1e300
    acc = GFIMAccumulator(R, D, dtype=torch.float32)
    with pytest.raises(NonFiniteGradientError, match="example 2"):
        acc.update(grads)


def test_rejected_update_leaves_state_unchanged(rng):
    grads = grads_fp32(rng)
    acc = filled(GFIMAccumulator, grads)
    before = acc.matrix()
    bad = grads.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError):
        acc.update(bad)
    assert acc.n == N
    assert torch.equal(acc.matrix(), before)


def test_empty_batch_is_a_no_op(rng):
    acc = filled(GFIMAccumulator, grads_fp32(rng))
    before = acc.matrix()
    acc.update(torch.zeros(0, R, D))
    assert acc.n == N and torch.equal(acc.matrix(), before)


@pytest.mark.parametrize("offset", [-1, 1.5, True])
def test_update_rejects_bad_offset(offset):
    with pytest.raises(ValueError, match="offset"):
        GFIMAccumulator(R, D).update(torch.zeros(1, R, D), offset=offset)


@pytest.mark.parametrize("method", ["matrix", "damping", "damped"])
def test_empty_accumulator_refuses_results(method):
    acc = GFIMAccumulator(R, D, name="k")
    with pytest.raises(EmptyCurvatureError, match="'k'.*update"):
        getattr(acc, method)()


@pytest.mark.parametrize("c", [0, -0.1, float("nan"), float("inf"), True, "0.1", None])
def test_damping_rejects_bad_scale(c, rng):
    acc = filled(GFIMAccumulator, grads_fp32(rng))
    with pytest.raises(ValueError, match=r"c \(the damping scale\)"):
        acc.damping(c)
    with pytest.raises(ValueError, match=r"c \(the damping scale\)"):
        acc.damped(c)


def test_zero_gradients_give_zero_damping_with_warning(caplog):
    acc = GFIMAccumulator(R, D, name="z")
    acc.update(torch.zeros(2, R, D))
    with caplog.at_level(logging.WARNING, logger="hyperinf.curvature"):
        assert acc.damping() == 0.0
    assert "'z'" in caplog.text and "zero" in caplog.text


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"r": 0, "d": D}, "r"),
        ({"r": R, "d": -2}, "d"),
        ({"r": 2.0, "d": D}, "r"),
        ({"r": R, "d": D, "dtype": torch.int32}, "dtype"),
        ({"r": R, "d": D, "dtype": "float64"}, "dtype"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        GFIMAccumulator(**kwargs)


def test_fim_rejects_bad_max_fim_dim():
    with pytest.raises(ValueError, match="max_fim_dim must be a positive integer"):
        FIMAccumulator(R, D, max_fim_dim=0)


@pytest.mark.parametrize(
    "other",
    [
        FIMAccumulator(R, D, name="q"),
        GFIMAccumulator(R, D, name="v"),
        GFIMAccumulator(R + 1, D, name="q"),
        GFIMAccumulator(R, D, name="q", dtype=torch.float32),
        "not an accumulator",
    ],
)
def test_merge_rejects_other_blocks(other):
    with pytest.raises(IncompatibleCurvatureError, match="cannot merge"):
        GFIMAccumulator(R, D, name="q").merge(other)


def test_make_accumulator():
    assert isinstance(make_accumulator("gfim", R, D), GFIMAccumulator)
    fim = make_accumulator("fim", R, D, max_fim_dim=R * D)
    assert isinstance(fim, FIMAccumulator) and fim.max_fim_dim == R * D
    with pytest.raises(ValueError, match="kind must be one of"):
        make_accumulator("kfac", R, D)
