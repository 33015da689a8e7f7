"""Saving and loading a CurvatureSet: one safetensors file, round-trip exact."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hyperinf.curvature import FORMAT_VERSION, CurvatureFileError, CurvatureSet

SHAPES = {"q.lora_A": (2, 5), "q.lora_B": (2, 3), "head": (4, 3)}
KINDS = {"head": ("gfim", "fim"), "q.lora_B": "fim"}


def make_grads(rng: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    return {name: torch.randn(n, r, d, generator=rng) for name, (r, d) in SHAPES.items()}


def assert_identical(a: CurvatureSet, b: CurvatureSet) -> None:
    assert a.names == b.names
    assert a.shapes == b.shapes
    assert a.n == b.n
    assert a.dtype == b.dtype
    assert a.max_fim_dim == b.max_fim_dim
    for name in a.names:
        assert a.kinds(name) == b.kinds(name)
        for kind in a.kinds(name):
            x, y = a[name][kind], b[name][kind]
            assert x.n == y.n
            assert torch.equal(x._sum, y._sum)
            assert torch.equal(x.sq_norm_sum, y.sq_norm_sum)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_then_update_equals_never_saving(dtype, rng, tmp_path):
    first, second = make_grads(rng, 5), make_grads(rng, 3)
    kept = CurvatureSet(SHAPES, KINDS, dtype=dtype, max_fim_dim=64)
    kept.update(first)

    path = tmp_path / "curvature.safetensors"
    kept.save(path)
    loaded = CurvatureSet.load(path)
    assert_identical(loaded, kept)

    kept.update(second, offset=5)
    loaded.update(second, offset=5)
    assert_identical(loaded, kept)
    assert loaded.n == 8
    for name in SHAPES:
        assert loaded.damping(name) == kept.damping(name)


def test_round_trip_of_empty_set(tmp_path):
    empty = CurvatureSet(SHAPES)
    empty.save(tmp_path / "empty.safetensors")
    loaded = CurvatureSet.load(tmp_path / "empty.safetensors")
    assert_identical(loaded, empty)
    assert loaded.n == 0


def test_file_is_one_safetensors_with_metadata(rng, tmp_path):
    curvature = CurvatureSet(SHAPES, KINDS)
    curvature.update(make_grads(rng, 4))
    path = tmp_path / "c.safetensors"
    curvature.save(path)

    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "hyperinf.curvature"
    assert metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(metadata["n"]) == 4
    assert json.loads(metadata["dtype"]) == "float64"
    blocks = json.loads(metadata["blocks"])
    assert [b["name"] for b in blocks] == list(SHAPES)
    assert blocks[2] == {"name": "head", "r": 4, "d": 3, "kinds": ["gfim", "fim"]}


def test_save_replaces_existing_file(rng, tmp_path):
    path = tmp_path / "c.safetensors"
    CurvatureSet(SHAPES).save(path)
    curvature = CurvatureSet(SHAPES)
    curvature.update(make_grads(rng, 2))
    curvature.save(path)
    assert CurvatureSet.load(path).n == 2


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        CurvatureSet.load(tmp_path / "nothing.safetensors")


def test_rejects_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not tensors " * 10)
    with pytest.raises(CurvatureFileError, match="notes.txt is not a safetensors file"):
        CurvatureSet.load(path)


@pytest.mark.parametrize("metadata", [None, {"format": "kronfluence.factors"}])
def test_rejects_other_safetensors_files(metadata, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2, 2)}, path, metadata=metadata)
    with pytest.raises(CurvatureFileError, match="weights.safetensors is not a curvature file"):
        CurvatureSet.load(path)


def rewrite(path, *, tensors=None, **metadata_changes) -> None:
    """Rewrites a saved curvature file with changed tensors and metadata fields."""
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata.update(metadata_changes)
    save_file(load_file(path) if tensors is None else tensors, path, metadata=metadata)


@pytest.fixture
def saved(rng, tmp_path):
    path = tmp_path / "c.safetensors"
    curvature = CurvatureSet(SHAPES, KINDS)
    curvature.update(make_grads(rng, 3))
    curvature.save(path)
    return path


@pytest.mark.parametrize("version", ["2", "0", "one"])
def test_rejects_unknown_version(version, saved):
    rewrite(saved, format_version=version)
    with pytest.raises(CurvatureFileError, match=rf"c.safetensors .*version '{version}'"):
        CurvatureSet.load(saved)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"n": "not json"}, "header field 'n' is not JSON"),
        ({"n": "-1"}, "n must be a non-negative integer"),
        ({"dtype": '"complex64"'}, "dtype"),
        ({"dtype": '"relu"'}, "unknown dtype"),
        ({"blocks": "[]"}, "shapes must be a non-empty mapping"),
        ({"blocks": '[{"name": "head"}]'}, "inconsistent"),
    ],
)
def test_rejects_bad_header(changes, match, saved):
    rewrite(saved, **changes)
    with pytest.raises(CurvatureFileError, match=rf"c.safetensors.*{match}"):
        CurvatureSet.load(saved)


def test_rejects_missing_tensor(saved):
    tensors = load_file(saved)
    del tensors["2.fim"]
    rewrite(saved, tensors=tensors)
    with pytest.raises(CurvatureFileError, match="c.safetensors.*'2.fim' is missing"):
        CurvatureSet.load(saved)


def test_rejects_wrong_tensor_shape(saved):
    tensors = load_file(saved)
    tensors["0.gfim"] = torch.zeros(4, 4, dtype=torch.float64)
    rewrite(saved, tensors=tensors)
    with pytest.raises(CurvatureFileError, match=r"'0.gfim' is \(4, 4\).*expected \(5, 5\)"):
        CurvatureSet.load(saved)


def test_rejects_wrong_tensor_dtype(saved):
    tensors = load_file(saved)
    tensors["1.sq_norm_sum"] = tensors["1.sq_norm_sum"].float()
    rewrite(saved, tensors=tensors)
    with pytest.raises(CurvatureFileError, match="'1.sq_norm_sum'.*torch.float32"):
        CurvatureSet.load(saved)


def test_rejects_extra_tensor(saved):
    tensors = load_file(saved)
    tensors["7.gfim"] = torch.zeros(1, 1, dtype=torch.float64)
    rewrite(saved, tensors=tensors)
    with pytest.raises(CurvatureFileError, match="unexpected tensors '7.gfim'"):
        CurvatureSet.load(saved)
