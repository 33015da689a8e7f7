"""Training and validation examples: loading tables, built-in sets, writing subsets back.

An :class:`ExampleSet` is either a *text* set (one text and one label per example) or a
*feature* set (a numeric vector and one label per example). Labels are mapped to class ids
``0..C-1`` in sorted order of the training set's label values (numerically when every value
is an integer, else as strings); a validation set reuses the training mapping by passing
``label_names=train.label_names``.

Inputs (``spec`` of :func:`load_examples`):

- ``*.jsonl`` / ``*.json``: one JSON object per line (a ``.json`` file holding one JSON array
  of objects is accepted too);
- ``*.csv`` / ``*.tsv``: a header row, then one example per row; cells are kept verbatim as
  strings in ``frame`` so that a subset is written back unchanged;
- ``*.parquet`` / ``*.pq``;
- a folder written by Hugging Face ``datasets``' ``save_to_disk`` (needs ``datasets``);
- ``builtin:NAME[?key=value&...]``: see :func:`load_builtin`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from hyperinf.tasks.atomic import replace_folder

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DEFAULT_FORTUNE_CATEGORIES = ("computers", "politics", "science", "work")
BUILTIN_NAMES = ("digits", "breast_cancer", "wine", "fortunes")
ID_FIELD = "id"

_JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_CSV_SUFFIXES = {".csv", ".tsv"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_HF_MARKERS = ("dataset_info.json", "state.json")
_BUILTIN_KEYS = {"seed", "val", "n", "categories", "min_chars", "split"}


class DataError(ValueError):
    """Bad input data; the message names the file and the field or row at fault."""


@dataclass
class ExampleSet:
    """Labelled examples, with the original rows kept for writing subsets back.

    Attributes:
        kind: ``"text"`` or ``"features"``.
        labels: ``(n,)`` int64 class ids in ``0..C-1``.
        label_names: original label values as strings; index = class id.
        texts: ``n`` strings when ``kind == "text"``, else None.
        features: ``(n, f)`` float32 when ``kind == "features"``, else None.
        feature_names: the ``f`` column names of ``features``, else None.
        ids: ``n`` example ids: the ``id`` column if present, else the row index.
        source: the file path or ``"builtin:NAME"``.
        fmt: ``"jsonl"``, ``"csv"``, ``"parquet"``, ``"hf"`` or ``"builtin"``.
        frame: the original rows (``n`` rows, index ``0..n-1``).
        image_shape: ``(h, w)`` when each feature vector is an image (digits: ``(8, 8)``).
    """

    kind: str
    labels: np.ndarray
    label_names: list[str]
    texts: list[str] | None
    features: np.ndarray | None
    feature_names: list[str] | None
    ids: list[str]
    source: str
    fmt: str
    frame: pd.DataFrame
    image_shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (the length of ``label_names``)."""
        return len(self.label_names)

    def subset(self, idx: Sequence[int] | np.ndarray) -> ExampleSet:
        """The examples at positions ``idx`` (ints or a boolean mask), in that order.

        Class ids and ``label_names`` are kept, so a subset is comparable with its parent.
        """
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for {len(self)} examples")
        return replace(
            self,
            labels=self.labels[idx].copy(),
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            features=None if self.features is None else self.features[idx].copy(),
            ids=[self.ids[i] for i in idx],
            frame=self.frame.iloc[idx].reset_index(drop=True),
        )


def load_examples(
    spec: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    feature_fields: Sequence[str] | None = None,
    label_names: list[str] | None = None,
) -> ExampleSet:
    """Load labelled examples from a file, a ``datasets`` folder or a built-in set.

    A table holding ``text_field`` is a text set. A table without it is a feature set: the
    features are ``feature_fields`` if given, else every numeric column other than
    ``label_field`` and ``id``.

    Args:
        spec: a path (see the module docstring) or ``builtin:NAME[?key=value&...]``; for a
            built-in set, ``split=train`` (default) or ``split=val`` picks the split.
        text_field: column holding the texts.
        label_field: column holding the labels (strings or integers).
        feature_fields: columns to use as features (forces a feature set).
        label_names: the training set's ``label_names``; pass it when loading a validation
            set so that both share one class mapping.

    Returns:
        The examples, with ``labels`` of shape ``(n,)``.

    Raises:
        DataError: missing, unreadable or empty file; unknown field; missing label or text
            (names the row); a single class; a label not in ``label_names``; a non-numeric
            or missing feature value.
    """
    spec = str(spec)
    if spec.startswith("builtin:"):
        return _load_builtin_split(spec, label_names)

    path = Path(spec)
    frame, fmt = _read_table(path)
    return examples_from_frame(
        frame,
        source=str(path),
        fmt=fmt,
        text_field=text_field,
        label_field=label_field,
        feature_fields=feature_fields,
        label_names=label_names,
    )


def examples_from_frame(
    frame: pd.DataFrame,
    *,
    source: str,
    fmt: str,
    text_field: str = "text",
    label_field: str = "label",
    feature_fields: Sequence[str] | None = None,
    label_names: list[str] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> ExampleSet:
    """Build an :class:`ExampleSet` from rows already in memory (see :func:`load_examples`).

    Args:
        frame: the rows; kept (re-indexed ``0..n-1``) as ``ExampleSet.frame``.
        source: named in error messages.
        fmt: the format to write subsets back in.
        text_field, label_field, feature_fields, label_names: as in :func:`load_examples`.
        image_shape: ``(h, w)`` if each feature vector is an image.

    Returns:
        The examples.
    """
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise DataError(f"{source}: no examples (the table is empty)")
    columns = [str(c) for c in frame.columns]
    _require_column(label_field, columns, source, "label field")

    names, labels = _map_labels(frame[label_field], label_field, source, label_names)
    ids = _example_ids(frame, source)

    if feature_fields is None and text_field in columns:
        texts = _texts(frame[text_field], text_field, source)
        return ExampleSet("text", labels, names, texts, None, None, ids, source, fmt, frame)

    if feature_fields is None:
        feature_fields = _numeric_columns(frame, exclude={label_field, ID_FIELD})
        if not feature_fields:
            raise DataError(
                f"{source}: no text field {text_field!r} and no numeric feature columns; "
                f"available columns: {', '.join(columns)}"
            )
    feature_fields = list(feature_fields)
    for name in feature_fields:
        _require_column(name, columns, source, "feature field")
    features = _features(frame, feature_fields, source)
    return ExampleSet(
        "features", labels, names, None, features, feature_fields, ids, source, fmt, frame,
        image_shape,
    )


def write_examples(examples: ExampleSet, path: str | Path, fmt: str | None = None) -> Path:
    """Write the rows of ``examples`` (its ``frame``) to ``path``, atomically.

    The original columns and values are kept. The file appears only when complete (written
    to a temporary name beside it, then renamed).

    Args:
        examples: the examples to write, e.g. a :meth:`ExampleSet.subset`.
        path: the output file (or folder, for ``fmt == "hf"``).
        fmt: ``"jsonl"``, ``"csv"``, ``"parquet"`` or ``"hf"``. Default: the input's format;
            for a built-in set, from the suffix of ``path`` (``.jsonl``/``.json``,
            ``.parquet``, else csv).

    Returns:
        ``path``.
    """
    path = Path(path)
    fmt = fmt or examples.fmt
    if fmt == "builtin":
        fmt = _format_from_suffix(path) or "csv"
    path.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "hf":
        _write_hf_folder(examples.frame, path)
    elif fmt in ("jsonl", "csv", "parquet"):
        _write_file_atomically(examples.frame, path, fmt)
    else:
        raise ValueError(f"fmt must be one of jsonl, csv, parquet, hf; got {fmt!r}")
    logger.info("wrote %d examples to %s (%s)", len(examples), path, fmt)
    return path


def load_builtin(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    n: int | None = None,
    categories: Sequence[str] | None = None,
    min_chars: int = 20,
    fortunes_dir: str | Path = FORTUNES_DIR,
) -> tuple[ExampleSet, ExampleSet]:
    """A built-in labelled set that needs no download, split into train and validation.

    Sets:

    - ``digits``: scikit-learn's 8x8 handwritten digits (1,797 examples, 64 features,
      10 classes, ``image_shape == (8, 8)``).
    - ``breast_cancer`` (569 x 30, 2 classes), ``wine`` (178 x 13, 3 classes): scikit-learn
      feature tables; labels are the class names.
    - ``fortunes``: quotes from Debian's ``fortunes`` package (``/usr/share/games/fortunes``),
      one class per category file. Default categories: computers, politics, science, work;
      at most ``n // len(categories)`` quotes per category (default ``n = 2000``), chosen at
      random; quotes shorter than ``min_chars`` characters, or found in more than one of the
      chosen categories, are dropped.

    Every split is stratified by label and seeded. ``name`` may carry options as a query
    string, which take precedence over the keyword arguments, e.g.
    ``builtin:fortunes?categories=computers,food,love&n=1200&seed=3&val=0.25``
    (keys: ``seed``, ``val``, ``n``, ``categories``, ``min_chars``).

    Args:
        name: ``NAME`` or ``builtin:NAME[?key=value&...]``.
        seed: seed of the split (and of the per-category sample for fortunes).
        val_fraction: fraction of examples in the validation split, in (0, 1); its size is
            rounded up.
        n: fortunes only: total number of examples before the split.
        categories: fortunes only: category files to use as classes.
        min_chars: fortunes only: shortest quote kept.
        fortunes_dir: fortunes only: the folder of category files.

    Returns:
        ``(train, val)``, sharing one class mapping.

    Raises:
        DataError: an unknown set, option or category, or fortunes not installed.
    """
    base, options = _parse_builtin(name)
    options.pop("split", None)
    seed = int(options.get("seed", seed))
    val_fraction = float(options.get("val", val_fraction))
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"builtin:{base}: val must be in (0, 1), got {val_fraction}")

    if base == "fortunes":
        if "categories" in options:
            categories = [c for c in options["categories"].split(",") if c]
        frame = _fortunes_frame(
            Path(fortunes_dir),
            categories or DEFAULT_FORTUNE_CATEGORIES,
            n=int(options.get("n", n or 2000)),
            min_chars=int(options.get("min_chars", min_chars)),
            seed=seed,
        )
        image_shape = None
    elif base in ("digits", "breast_cancer", "wine"):
        if "categories" in options or "n" in options:
            raise DataError(f"builtin:{base}: options n and categories apply to fortunes only")
        frame, image_shape = _sklearn_frame(base)
    else:
        raise DataError(f"unknown built-in set {base!r}; choose one of {', '.join(BUILTIN_NAMES)}")

    full = examples_from_frame(
        frame, source=f"builtin:{base}", fmt="builtin", image_shape=image_shape
    )
    train_idx, val_idx = _stratified_split(full.labels, val_fraction, seed, f"builtin:{base}")
    return full.subset(train_idx), full.subset(val_idx)


def _load_builtin_split(spec: str, label_names: list[str] | None) -> ExampleSet:
    """One split of a built-in set, checked against a training mapping if given."""
    _, options = _parse_builtin(spec)
    split = options.get("split", "train")
    if split not in ("train", "val"):
        raise DataError(f"{spec}: split must be train or val, got {split!r}")
    train, val = load_builtin(spec)
    chosen = train if split == "train" else val
    if label_names is not None and list(label_names) != chosen.label_names:
        raise DataError(
            f"{spec}: its classes {chosen.label_names} differ from the training set's "
            f"{list(label_names)}"
        )
    return chosen


def _parse_builtin(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``builtin:NAME?k=v&...`` into ``NAME`` and its options."""
    body = spec.removeprefix("builtin:")
    base, _, query = body.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - _BUILTIN_KEYS)
    if unknown:
        raise DataError(
            f"builtin:{base}: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_BUILTIN_KEYS))}"
        )
    return base, options


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a file or ``datasets`` folder into a frame; return it and its format name."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return _read_hf_folder(path), "hf"

    fmt = _format_from_suffix(path)
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .json, .csv, .tsv, "
            ".parquet or a datasets folder"
        )
    try:
        if fmt == "jsonl":
            frame = _read_json_records(path)
        elif fmt == "csv":
            frame = _read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as {fmt}: {exc}") from exc
    if len(frame) == 0:
        raise DataError(f"{path}: no examples (the file is empty)")
    return frame, fmt


def _format_from_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return "jsonl"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    return None


def _read_csv(path: Path) -> pd.DataFrame:
    """Cells as verbatim strings (an empty cell is ``""``), so writing back changes nothing."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: no examples (the file is empty)") from exc


def _read_json_records(path: Path) -> pd.DataFrame:
    """JSON lines (or one JSON array) of objects; a bad line is named by its number."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: no examples (the file is empty)")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from exc
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected JSON lines or one JSON array of objects")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: row {i} is not a JSON object")
    return _restore_int_columns(pd.DataFrame.from_records(records), records)


def _restore_int_columns(frame: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Keep integer columns with gaps as integers (pandas would turn them into floats)."""
    for column in frame.columns:
        if frame[column].dtype.kind != "f" or not frame[column].isna().any():
            continue
        values = [r.get(column) for r in records]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            frame[column] = frame[column].astype("Int64")
    return frame


def _read_hf_folder(path: Path) -> pd.DataFrame:
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir()) or ["train"]
        raise DataError(
            f"{path}: holds several splits ({', '.join(splits)}); pass one split's folder, "
            f"e.g. {path / splits[0]}"
        )
    if not any((path / marker).exists() for marker in _HF_MARKERS):
        raise DataError(
            f"{path}: a folder, but not one written by datasets' save_to_disk "
            "(no dataset_info.json or state.json)"
        )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{path}: reading a datasets folder needs the datasets package; install it with "
            "`pip install datasets` (or `pip install hyperinf[text]`)"
        ) from exc
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"{path}: cannot read the datasets folder: {exc}") from exc
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(f"{path}: holds several splits ({', '.join(dataset)}); pass one")
    frame = dataset.to_pandas()
    if len(frame) == 0:
        raise DataError(f"{path}: no examples (the dataset is empty)")
    return frame


def _require_column(name: str, columns: list[str], source: str, role: str) -> None:
    if name not in columns:
        raise DataError(
            f"{source}: unknown {role} {name!r}; available columns: {', '.join(columns)}"
        )


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _label_string(value: Any) -> str:
    """The canonical string of a label value: integers (also 3.0) as ``"3"``."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _sorted_label_names(values: set[str]) -> list[str]:
    """Numerical order when every label is an integer, else string order."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def _map_labels(
    column: pd.Series, field: str, source: str, label_names: list[str] | None
) -> tuple[list[str], np.ndarray]:
    strings = []
    for i, value in enumerate(column.tolist()):
        if _is_missing(value):
            raise DataError(f"{source}: row {i}: missing value in label field {field!r}")
        strings.append(_label_string(value))

    if label_names is None:
        names = _sorted_label_names(set(strings))
        if len(names) < 2:
            raise DataError(
                f"{source}: label field {field!r} holds a single class ({names[0]!r}); "
                "classification needs at least two"
            )
    else:
        names = [str(name) for name in label_names]
    index = {name: k for k, name in enumerate(names)}

    labels = np.empty(len(strings), dtype=np.int64)
    for i, value in enumerate(strings):
        if value not in index:
            raise DataError(
                f"{source}: row {i}: label {value!r} in field {field!r} is not among the "
                f"training labels ({', '.join(names)})"
            )
        labels[i] = index[value]
    return names, labels


def _texts(column: pd.Series, field: str, source: str) -> list[str]:
    texts = []
    for i, value in enumerate(column.tolist()):
        if _is_missing(value):
            raise DataError(f"{source}: row {i}: missing or empty value in text field {field!r}")
        texts.append(str(value))
    return texts


def _example_ids(frame: pd.DataFrame, source: str) -> list[str]:
    if ID_FIELD not in frame.columns:
        return [str(i) for i in range(len(frame))]
    ids = []
    for i, value in enumerate(frame[ID_FIELD].tolist()):
        if _is_missing(value):
            raise DataError(f"{source}: row {i}: missing value in field {ID_FIELD!r}")
        ids.append(_label_string(value))
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            raise DataError(f"{source}: row {i}: duplicate {ID_FIELD!r} {value!r}")
        seen.add(value)
    return ids


def _as_numbers(column: pd.Series) -> pd.Series:
    """Numeric values of a column; entries that are not numbers become NaN."""
    if column.dtype.kind in "iuf":
        return column.astype(np.float64)
    if column.dtype.kind == "b":
        return pd.Series(np.nan, index=column.index)
    return pd.to_numeric(column, errors="coerce").astype(np.float64)


def _numeric_columns(frame: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Columns whose every value is a number; other columns are skipped (and logged)."""
    chosen, skipped = [], []
    for column in frame.columns:
        name = str(column)
        if name in exclude:
            continue
        if _as_numbers(frame[column]).notna().all():
            chosen.append(name)
        else:
            skipped.append(name)
    if chosen and skipped:
        logger.info("feature table: skipped non-numeric columns %s", ", ".join(skipped))
    return chosen


def _features(frame: pd.DataFrame, names: list[str], source: str) -> np.ndarray:
    columns = []
    for name in names:
        raw = frame[name]
        numbers = _as_numbers(raw)
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{source}: row {i}: feature field {name!r} holds {raw.iloc[i]!r}, "
                "not a number"
            )
        columns.append(numbers.to_numpy())
    return np.stack(columns, axis=1).astype(np.float32)


def _stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        train_idx, val_idx = train_test_split(
            np.arange(labels.shape[0]), test_size=val_fraction, random_state=seed,
            stratify=labels,
        )
    except ValueError as exc:
        raise DataError(f"{source}: cannot split into train and val: {exc}") from exc
    return np.sort(train_idx), np.sort(val_idx)


def _sklearn_frame(name: str) -> tuple[pd.DataFrame, tuple[int, int] | None]:
    from sklearn import datasets as sk_datasets

    loader = {
        "digits": sk_datasets.load_digits,
        "breast_cancer": sk_datasets.load_breast_cancer,
        "wine": sk_datasets.load_wine,
    }[name]
    bunch = loader()
    frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
    target_names = [str(t) for t in bunch.target_names]
    frame["label"] = [target_names[t] for t in bunch.target]
    frame.insert(0, ID_FIELD, np.arange(len(frame)))
    image_shape = tuple(bunch.images.shape[1:]) if name == "digits" else None
    return frame, image_shape


def fortune_categories(fortunes_dir: str | Path = FORTUNES_DIR) -> list[str]:
    """Category files in the fortunes folder (skipping ``.dat``/``.u8`` files and folders).

    Raises:
        DataError: the folder does not exist.
    """
    folder = Path(fortunes_dir)
    if not folder.is_dir():
        raise DataError(
            f"builtin:fortunes: {folder} not found; install it with `apt-get install fortunes`"
        )
    return sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and p.suffix not in (".dat", ".u8")
    )


def read_fortunes(path: Path) -> list[str]:
    """The quotes of one category file: blocks separated by lines holding only ``%``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    quotes, lines = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            quotes.append("\n".join(lines).strip())
            lines = []
        else:
            lines.append(line)
    quotes.append("\n".join(lines).strip())
    return [q for q in quotes if q]


def _fortunes_frame(
    folder: Path, categories: Sequence[str], *, n: int, min_chars: int, seed: int
) -> pd.DataFrame:
    available = fortune_categories(folder)
    categories = list(dict.fromkeys(categories))
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DataError(
            f"builtin:fortunes: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; available: {', '.join(available)}"
        )
    if len(categories) < 2:
        raise DataError("builtin:fortunes: categories must name at least two categories")
    if n < 2 * len(categories):
        raise DataError(f"builtin:fortunes: n={n} is too small for {len(categories)} classes")

    quotes = {c: read_fortunes(folder / c) for c in categories}
    quotes = _drop_shared_and_short(quotes, min_chars)
    cap = n // len(categories)
    rng = np.random.default_rng(seed)
    rows = []
    for category in categories:
        numbered = quotes[category]
        if len(numbered) < cap:
            logger.info("fortunes: %s has %d quotes, fewer than %d", category, len(numbered), cap)
        take = np.sort(rng.permutation(len(numbered))[:cap])
        rows.extend(
            {ID_FIELD: f"{category}:{numbered[k][0]}", "text": numbered[k][1], "label": category}
            for k in take
        )
    return pd.DataFrame(rows)


def _drop_shared_and_short(
    quotes: dict[str, list[str]], min_chars: int
) -> dict[str, list[tuple[int, str]]]:
    """Number each quote within its file; drop short ones and ones in several categories."""
    owners: dict[str, set[str]] = {}
    for category, texts in quotes.items():
        for text in texts:
            owners.setdefault(text, set()).add(category)
    return {
        category: [
            (k, text) for k, text in enumerate(texts)
            if len(text) >= min_chars and len(owners[text]) == 1
        ]
        for category, texts in quotes.items()
    }


def _write_file_atomically(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame.to_csv(temp, index=False, sep=sep)
        elif fmt == "parquet":
            frame.to_parquet(temp, index=False)
        else:
            _write_jsonl(frame, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _json_value(value: Any) -> Any:
    if _is_missing(value) and not isinstance(value, str):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    columns = [str(c) for c in frame.columns]
    with path.open("w", encoding="utf-8") as out:
        for row in frame.itertuples(index=False, name=None):
            record = {c: _json_value(v) for c, v in zip(columns, row)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_hf_folder(frame: pd.DataFrame, path: Path) -> None:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{path}: writing a datasets folder needs the datasets package; install it with "
            "`pip install datasets`"
        ) from exc
    with replace_folder(path) as staging:
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(staging))
