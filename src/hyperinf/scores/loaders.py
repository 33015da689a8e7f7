"""Turning datasets into batches the model takes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

#: Keys of sequence-shaped fields and the value their padding takes.
_PAD_VALUES = {"attention_mask": 0, "labels": -100, "token_type_ids": 0}


def pad_collate(items: Sequence[Any]) -> Any:
    """Collate examples into one batch, padding variable-length sequences.

    Dict examples (as Hugging Face tokenizers produce them) are padded on the right to the
    longest sequence of the batch: ``input_ids`` with 0, ``attention_mask`` with 0 and
    sequence-shaped ``labels`` with -100, so that padding is masked everywhere. Other
    examples go through :func:`torch.utils.data.default_collate`.

    Args:
        items: The examples of one batch.

    Returns:
        The batch.
    """
    if not items or not isinstance(items[0], Mapping):
        return torch.utils.data.default_collate(list(items))

    keys = list(items[0].keys())
    batch = {}
    for key in keys:
        values = [torch.as_tensor(item[key]) for item in items]
        if values[0].dim() == 0 or all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
            continue
        length = max(v.shape[0] for v in values)
        pad = _PAD_VALUES.get(key, 0)
        padded = values[0].new_full((len(values), length, *values[0].shape[1:]), pad)
        for row, value in enumerate(values):
            padded[row, : value.shape[0]] = value
        batch[key] = padded
    return batch


def as_loader(
    data: Dataset | DataLoader | Iterable, batch_size: int, collate_fn: Any = None
) -> Iterable:
    """Wrap a dataset in an ordered data loader; pass a data loader through.

    The order of the examples must be fixed: scores are returned in dataset order, and the
    training data is read twice. A shuffling data loader is therefore refused.

    Args:
        data: A map-style dataset, a data loader or any re-iterable of batches.
        batch_size: Examples per batch when ``data`` is a dataset.
        collate_fn: Collation for a dataset; :func:`pad_collate` by default.

    Returns:
        Something that yields batches in the same order on every iteration.

    Raises:
        ValueError: If ``data`` is a shuffling data loader, an iterator (one pass only) or
            an empty dataset.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, torch.utils.data.RandomSampler):
            raise ValueError(
                "the data loader shuffles: influence passes need a fixed order "
                "(create it with shuffle=False)"
            )
        return data
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError("the dataset is empty")
        return DataLoader(
            data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn or pad_collate
        )
    if iter(data) is data:
        raise ValueError(
            "data is an iterator that can be read only once; pass a dataset, a data loader "
            "or a list of batches"
        )
    return data
