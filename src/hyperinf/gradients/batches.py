"""Batches as the model takes them.

A batch is either a dict of tensors as Hugging Face models take them (``input_ids``,
``attention_mask``, ``labels``, ...) or an ``(inputs, targets)`` tuple or list of two
tensors. Every tensor's first dimension is the batch dimension ``b``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hyperinf.gradients.errors import BatchError

Batch = Mapping[str, Tensor] | tuple[Tensor, Tensor] | list[Tensor]
Index = int | slice | Sequence[int] | Tensor


def check_batch(batch: Any, required_keys: Sequence[str] = ()) -> int:
    """Check a batch's structure and return its size.

    Args:
        batch: A dict of tensors or an ``(inputs, targets)`` pair of tensors.
        required_keys: Keys a dict batch must hold (e.g. ``("labels",)`` for a loss).

    Returns:
        The batch size ``b``.

    Raises:
        BatchError: Unsupported type, a value that is not a tensor, a 0-d tensor, tensors of
            different batch sizes, or a missing required key; the message names the key or
            position.
    """
    items = _named_items(batch)
    if isinstance(batch, Mapping):
        missing = [k for k in required_keys if k not in batch]
        if missing:
            raise BatchError(
                f"batch has no key {missing[0]!r} (needed by the loss); keys: {sorted(batch)}"
            )
    if not items:
        raise BatchError("batch is empty")

    sizes: dict[str, int] = {}
    for key, value in items:
        if not isinstance(value, Tensor):
            raise BatchError(f"batch[{key}] is a {type(value).__name__}, not a tensor")
        if value.dim() == 0:
            raise BatchError(f"batch[{key}] is a 0-d tensor; it needs a batch dimension")
        sizes[key] = value.shape[0]

    first_key, first_size = next(iter(sizes.items()))
    for key, size in sizes.items():
        if size != first_size:
            raise BatchError(
                f"batch[{key}] has batch size {size} but batch[{first_key}] has {first_size}"
            )
    return first_size


def batch_size(batch: Batch) -> int:
    """The number of examples ``b`` in a batch (checked as by :func:`check_batch`)."""
    return check_batch(batch)


def move_to(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with every tensor moved to ``device`` (same structure)."""
    check_batch(batch)
    if isinstance(batch, Mapping):
        return {k: v.to(device) for k, v in batch.items()}
    return type(batch)(v.to(device) for v in batch)


def select(batch: Batch, index: Index) -> Batch:
    """A sub-batch.

    Args:
        batch: The batch.
        index: An int (the sub-batch keeps its batch dimension: size 1), a slice, a sequence
            of ints or an index tensor.

    Returns:
        The sub-batch with the same structure.
    """
    check_batch(batch)
    if isinstance(index, int):
        index = slice(index, index + 1)
    elif not isinstance(index, slice):
        index = torch.as_tensor(index, dtype=torch.long)
    if isinstance(batch, Mapping):
        return {k: _take(v, index) for k, v in batch.items()}
    return type(batch)(_take(v, index) for v in batch)


def _take(value: Tensor, index: slice | Tensor) -> Tensor:
    if isinstance(index, Tensor):
        return value[index.to(value.device)]
    return value[index]


def trim_padding(batch: Batch) -> Batch:
    """Cut a dict batch's sequence length to the end of its longest ``attention_mask`` row.

    Only trailing columns where every row of ``attention_mask`` is 0 are removed (right
    padding), so left-padded batches and positions of real tokens are unchanged. Every tensor
    whose first two dimensions equal the mask's ``(b, T)`` is cut. Tuple batches and dicts
    without a 2-D ``attention_mask`` are returned unchanged.

    Returns:
        The batch with sequence length ``T' <= T``.
    """
    check_batch(batch)
    if not isinstance(batch, Mapping):
        return batch
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch

    used = mask.ne(0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    if length == mask.shape[1]:
        return batch
    return {
        k: v[:, :length] if v.dim() >= 2 and v.shape[:2] == mask.shape else v
        for k, v in batch.items()
    }


def _named_items(batch: Any) -> list[tuple[str, Any]]:
    if isinstance(batch, Mapping):
        return [(repr(k), v) for k, v in batch.items()]
    if isinstance(batch, tuple | list):
        if len(batch) != 2:
            raise BatchError(
                f"a tuple/list batch must be (inputs, targets), got {len(batch)} elements"
            )
        return [(str(i), v) for i, v in enumerate(batch)]
    raise BatchError(
        f"unsupported batch type {type(batch).__name__}: use a dict of tensors or an "
        "(inputs, targets) tuple"
    )
