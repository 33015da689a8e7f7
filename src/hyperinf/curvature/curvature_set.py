"""`CurvatureSet`: the curvature of every block of a model, accumulated together.

Each block has one accumulator per requested kind ('gfim', 'fim'); all blocks see the same
training examples, so the set has one example count `n`. A set can be merged with the set of
another part of the dataset and saved to / loaded from one safetensors file, so a pass over
the training data can be split, interrupted and resumed.
"""

import copy
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Self

import torch
from torch import Tensor

from hyperinf.curvature._validation import floating_dtype, non_negative_int, positive_int
from hyperinf.curvature.accumulators import (
    DEFAULT_DAMPING_SCALE,
    DEFAULT_MAX_FIM_DIM,
    KINDS,
    BlockAccumulator,
    make_accumulator,
)
from hyperinf.curvature.errors import (
    BlockNameError,
    BlockShapeError,
    CurvatureFileError,
    IncompatibleCurvatureError,
)
from hyperinf.curvature.storage import load_state, save_state

logger = logging.getLogger(__name__)

Kinds = str | Sequence[str]


class CurvatureSet:
    """GFIM and/or FIM accumulators for many blocks, keyed by block name.

    Args:
        shapes: `(r, d)` of every block, by block name (see docs/architecture.md for how a
            weight's gradient becomes an `(r, d)` block). Order is kept.
        kinds: Which matrices to accumulate: one kind or a sequence of kinds ('gfim', 'fim')
            for every block, or a mapping from block name to kinds; blocks the mapping does
            not name get ('gfim',).
        dtype: Accumulation dtype.
        device: Device of the accumulated tensors.
        max_fim_dim: Largest `r d` for which a full FIM may be requested.

    Raises:
        ValueError: If `shapes` is empty or malformed, a kind is unknown, or `dtype` is not
            floating point.
        BlockNameError: If `kinds` names a block that `shapes` does not.
        FIMTooLargeError: If a FIM is requested for a block with `r d > max_fim_dim`.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, int]],
        kinds: Kinds | Mapping[str, Kinds] = ("gfim",),
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        max_fim_dim: int = DEFAULT_MAX_FIM_DIM,
    ) -> None:
        self.dtype = floating_dtype(dtype)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.max_fim_dim = positive_int(max_fim_dim, "max_fim_dim")
        self._shapes = _check_shapes(shapes)
        block_kinds = _resolve_kinds(kinds, self._shapes)

        self._blocks: dict[str, dict[str, BlockAccumulator]] = {
            name: self._new_block(name, shape, block_kinds[name])
            for name, shape in self._shapes.items()
        }

    def _new_block(
        self, name: str, shape: tuple[int, int], kinds: tuple[str, ...]
    ) -> dict[str, BlockAccumulator]:
        r, d = shape
        return {
            kind: make_accumulator(kind, r, d, dtype=self.dtype, device=self.device, name=name,
                                   max_fim_dim=self.max_fim_dim)
            for kind in kinds
        }

    @property
    def names(self) -> tuple[str, ...]:
        """Block names, in the order of `shapes`."""
        return tuple(self._blocks)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """`(r, d)` of every block, by name (a copy)."""
        return dict(self._shapes)

    @property
    def n(self) -> int:
        """Number of training examples accumulated (the same for every block)."""
        return self._first(self.names[0]).n

    def kinds(self, name: str) -> tuple[str, ...]:
        """The kinds accumulated for block `name`."""
        return tuple(self[name])

    def accumulator(self, name: str, kind: str = "gfim") -> BlockAccumulator:
        """The accumulator of `kind` for block `name`.

        Raises:
            BlockNameError: If there is no block `name` or it does not accumulate `kind`.
        """
        block = self[name]
        if kind not in block:
            raise BlockNameError(
                f"block {name!r} accumulates {tuple(block)}, not {kind!r}; "
                f"ask for it in `kinds` when building the CurvatureSet"
            )
        return block[kind]

    def damping(self, name: str, c: float = DEFAULT_DAMPING_SCALE) -> float:
        """The damping `lambda = c * mean_i ||g_i||_F^2 / (r d)` of block `name`."""
        return self._first(name).damping(c)

    def dampings(self, c: float = DEFAULT_DAMPING_SCALE) -> dict[str, float]:
        """The damping of every block, by name."""
        return {name: self.damping(name, c) for name in self.names}

    def __getitem__(self, name: str) -> Mapping[str, BlockAccumulator]:
        """The accumulators of block `name`, by kind (read-only view)."""
        if name not in self._blocks:
            raise BlockNameError(f"unknown block {name!r}; blocks are {_preview(self.names)}")
        return MappingProxyType(self._blocks[name])

    def __contains__(self, name: object) -> bool:
        return name in self._blocks

    def __iter__(self) -> Iterator[str]:
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def __repr__(self) -> str:
        return (
            f"CurvatureSet({len(self)} blocks, n={self.n}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def _first(self, name: str) -> BlockAccumulator:
        return next(iter(self[name].values()))

    def update(self, grads: Mapping[str, Tensor], *, offset: int = 0) -> None:
        """Adds one batch of per-example gradients of every block.

        The whole batch is validated before anything is added, so a rejected batch leaves
        the set unchanged.

        Args:
            grads: `(b, r, d)` gradients by block name; exactly the set's blocks, all with
                the same `b`.
            offset: Dataset index of the batch's first training example, for error messages.

        Raises:
            BlockNameError: If a block is missing from `grads` or `grads` has an extra one.
            BlockShapeError: If a block's gradients are not `(b, r, d)`, or batch sizes differ.
            NonFiniteGradientError: If a gradient has inf or NaN (names block and example).
        """
        self._check_names(grads)
        first = self.names[0]
        for name in self.names:
            self._first(name)._check(grads[name], offset=offset)
            if grads[name].shape[0] != grads[first].shape[0]:
                raise BlockShapeError(
                    f"block {name!r} has a batch of {grads[name].shape[0]} examples but block "
                    f"{first!r} has {grads[first].shape[0]}; every block needs the same batch"
                )

        for name in self.names:
            cast = self._first(name)._cast(grads[name])
            for acc in self._blocks[name].values():
                acc._accumulate(cast)

    def _check_names(self, grads: Mapping[str, Tensor]) -> None:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a mapping from block name to tensor, got {grads!r}")
        missing = [name for name in self.names if name not in grads]
        if missing:
            raise BlockNameError(f"grads lacks block(s) {_preview(missing)}")
        extra = [name for name in grads if name not in self._blocks]
        if extra:
            raise BlockNameError(
                f"grads has block(s) {_preview(extra)} that this CurvatureSet does not know; "
                f"its blocks are {_preview(self.names)}"
            )

    def merge(self, other: Self) -> Self:
        """The curvature set of the union of both sets' training examples.

        Neither input changes; the result keeps this set's block order and device.

        Raises:
            IncompatibleCurvatureError: If the sets differ in blocks, shapes, kinds or dtype.
        """
        if not isinstance(other, CurvatureSet):
            raise IncompatibleCurvatureError(
                f"cannot merge a CurvatureSet with {type(other).__name__}"
            )
        if self._structure() != other._structure():
            raise IncompatibleCurvatureError(
                "cannot merge curvature sets of different blocks, shapes, kinds or dtypes: "
                f"{self._structure()} against {other._structure()}"
            )

        merged = copy.copy(self)
        merged._blocks = {
            name: {kind: acc.merge(other._blocks[name][kind]) for kind, acc in accs.items()}
            for name, accs in self._blocks.items()
        }
        return merged

    def _structure(self) -> tuple:
        blocks = sorted((name, self._shapes[name], self.kinds(name)) for name in self.names)
        return (str(self.dtype), blocks)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the set to one safetensors file (unnormalised sums, so updates can resume).

        Args:
            path: Destination file; replaced atomically if it exists.
        """
        tensors: dict[str, Tensor] = {}
        blocks = []
        for index, (name, accs) in enumerate(self._blocks.items()):
            r, d = self._shapes[name]
            blocks.append({"name": name, "r": r, "d": d, "kinds": list(accs)})
            tensors[f"{index}.sq_norm_sum"] = self._first(name).sq_norm_sum
            for kind, acc in accs.items():
                tensors[f"{index}.{kind}"] = acc._sum

        header = {
            "blocks": blocks,
            "n": self.n,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_fim_dim": self.max_fim_dim,
        }
        save_state(path, tensors, header)
        logger.info("saved curvature of %d blocks (n = %d) to %s", len(self), self.n, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> Self:
        """Reads a set written by `save`.

        Args:
            path: A curvature file.
            device: Where to put the accumulated tensors (CPU by default).

        Raises:
            FileNotFoundError: If `path` does not exist.
            CurvatureFileError: If `path` is not a curvature file, has an unknown format
                version, or its header and tensors disagree.
        """
        tensors, header = load_state(path)
        try:
            curvature = cls._from_state(tensors, header, device)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CurvatureFileError):
                raise
            raise CurvatureFileError(f"{path}: inconsistent curvature file: {exc}") from exc
        logger.info("loaded curvature of %d blocks (n = %d) from %s", len(curvature),
                    curvature.n, path)
        return curvature

    @classmethod
    def _from_state(
        cls, tensors: dict[str, Tensor], header: dict, device: torch.device | str | None
    ) -> Self:
        dtype = getattr(torch, header["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {header['dtype']!r}")
        n = non_negative_int(header["n"], "n")

        blocks = header["blocks"]
        shapes = {b["name"]: (b["r"], b["d"]) for b in blocks}
        kinds = {b["name"]: tuple(b["kinds"]) for b in blocks}
        if len(shapes) != len(blocks):
            raise ValueError("block names are not unique")
        curvature = cls(
            shapes, kinds, dtype=dtype, device=device, max_fim_dim=header["max_fim_dim"]
        )

        expected = set()
        for index, name in enumerate(curvature.names):
            sq_key = f"{index}.sq_norm_sum"
            sq_norm_sum = _stored(tensors, sq_key, (), dtype)
            expected.add(sq_key)
            for kind, acc in curvature._blocks[name].items():
                key = f"{index}.{kind}"
                side = acc.matrix_dim
                acc._sum = _stored(tensors, key, (side, side), dtype).to(curvature.device)
                acc.sq_norm_sum = sq_norm_sum.to(curvature.device, copy=True)
                acc.n = n
                expected.add(key)
        unexpected = sorted(set(tensors) - expected)
        if unexpected:
            raise ValueError(f"unexpected tensors {_preview(unexpected)}")
        return curvature


def _stored(tensors: dict[str, Tensor], key: str, shape: tuple, dtype: torch.dtype) -> Tensor:
    if key not in tensors:
        raise ValueError(f"tensor {key!r} is missing")
    tensor = tensors[key]
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise ValueError(
            f"tensor {key!r} is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {dtype}"
        )
    return tensor.clone()


def _check_shapes(shapes: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError(f"shapes must be a non-empty mapping of block name to (r, d), got "
                         f"{shapes!r}")
    checked = {}
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"shapes: block names must be non-empty strings, got {name!r}")
        if not isinstance(shape, Sequence) or len(shape) != 2:
            raise ValueError(f"shapes[{name!r}] must be a pair (r, d), got {shape!r}")
        r = positive_int(shape[0], f"shapes[{name!r}] r")
        d = positive_int(shape[1], f"shapes[{name!r}] d")
        checked[name] = (r, d)
    return checked


def _normalise_kinds(kinds: Kinds, where: str) -> tuple[str, ...]:
    given = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [kind for kind in given if kind not in KINDS]
    if unknown or not given:
        raise ValueError(f"{where} must be one or more of {KINDS}, got {kinds!r}")
    return tuple(kind for kind in KINDS if kind in given)


def _resolve_kinds(
    kinds: Kinds | Mapping[str, Kinds], shapes: dict[str, tuple[int, int]]
) -> dict[str, tuple[str, ...]]:
    if not isinstance(kinds, Mapping):
        common = _normalise_kinds(kinds, "kinds")
        return {name: common for name in shapes}

    extra = [name for name in kinds if name not in shapes]
    if extra:
        raise BlockNameError(f"kinds names block(s) {_preview(extra)} absent from shapes")
    return {
        name: _normalise_kinds(kinds.get(name, ("gfim",)), f"kinds[{name!r}]")
        for name in shapes
    }


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in list(names)[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown

