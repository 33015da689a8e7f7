"""Loading, splitting and writing examples (hyperinf.tasks.data)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hyperinf.tasks.data import (
    DataError,
    load_builtin,
    load_examples,
    read_fortunes,
    write_examples,
)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


TEXT_ROWS = [
    {"id": "a", "text": "good film", "label": "pos", "extra": 1},
    {"id": "b", "text": "bad film", "label": "neg", "extra": None},
    {"id": "c", "text": "fine", "label": "pos", "extra": 3},
    {"id": "d", "text": "awful", "label": "meh", "extra": 4},
]


def test_jsonl_text_set_maps_labels_in_sorted_order(tmp_path):
    examples = load_examples(_write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS))

    assert examples.kind == "text" and examples.fmt == "jsonl"
    assert examples.label_names == ["meh", "neg", "pos"]
    np.testing.assert_array_equal(examples.labels, [2, 1, 2, 0])
    assert examples.labels.dtype == np.int64
    assert examples.texts == ["good film", "bad film", "fine", "awful"]
    assert examples.ids == ["a", "b", "c", "d"]
    assert examples.num_classes == 3 and len(examples) == 4


def test_integer_labels_sort_numerically_and_val_reuses_mapping(tmp_path):
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([10, 2, 10, 2, 7])]
    train = load_examples(_write_jsonl(tmp_path / "train.jsonl", rows))
    assert train.label_names == ["2", "7", "10"]
    np.testing.assert_array_equal(train.labels, [2, 0, 2, 0, 1])
    assert train.ids == ["0", "1", "2", "3", "4"]

    # A CSV holds the same labels as strings; the mapping must still match.
    (tmp_path / "val.csv").write_text("text,label\nx,7\ny,10\n")
    val = load_examples(tmp_path / "val.csv", label_names=train.label_names)
    np.testing.assert_array_equal(val.labels, [1, 2])
    assert val.label_names == train.label_names


def test_val_label_unseen_in_train_names_value_and_file(tmp_path):
    train = load_examples(_write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS))
    val_path = _write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "label": "wow"}])
    with pytest.raises(DataError, match=r"val\.jsonl.*'wow'"):
        load_examples(val_path, label_names=train.label_names)


def test_csv_feature_table_uses_numeric_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,x1,name,x2,label\n7,1.5,u,2,b\n8,-1,v,0.25,a\n9,3,w,4,b\n")
    examples = load_examples(path)

    assert examples.kind == "features" and examples.fmt == "csv"
    assert examples.feature_names == ["x1", "x2"]
    np.testing.assert_array_equal(
        examples.features, np.array([[1.5, 2], [-1, 0.25], [3, 4]], dtype=np.float32)
    )
    assert examples.features.dtype == np.float32
    np.testing.assert_array_equal(examples.labels, [1, 0, 1])
    assert examples.ids == ["7", "8", "9"]

    chosen = load_examples(path, feature_fields=["x2"])
    np.testing.assert_array_equal(chosen.features[:, 0], [2, 0.25, 4])
    with pytest.raises(DataError, match=r"row 0: feature field 'name' holds 'u'"):
        load_examples(path, feature_fields=["x1", "name"])


@pytest.mark.parametrize(
    ("content", "kwargs", "pattern"),
    [
        ("text,label\n", {}, r"t\.csv: no examples"),
        ("", {}, r"t\.csv: no examples"),
        ("text,label\na,x\nb,x\n", {}, r"single class \('x'\)"),
        ("text,label\na,x\nb,\nc,y\n", {}, r"row 1: missing value in label field 'label'"),
        ("text,label\na,x\n ,y\n", {}, r"row 1: missing or empty value in text field"),
        ("text,label\na,x\nb,y\n", {"label_field": "gold"},
         r"unknown label field 'gold'; available columns: text, label"),
        ("text,label\na,x\nb,y\n", {"feature_fields": ["z"]},
         r"unknown feature field 'z'; available columns: text, label"),
        ("words,label\na,x\nb,y\n", {},
         r"no text field 'text' and no numeric feature columns; available columns: words"),
        ("id,text,label\n1,a,x\n1,b,y\n", {}, r"row 1: duplicate 'id' '1'"),
    ],
)
def test_bad_tables_raise_data_error_naming_the_fault(tmp_path, content, kwargs, pattern):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_examples(path, **kwargs)


def test_missing_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_examples(tmp_path / "nope.jsonl")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_examples(bad)

    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"g\.parquet: cannot read it as parquet"):
        load_examples(garbage)

    other = tmp_path / "t.xlsx"
    other.write_text("x")
    with pytest.raises(DataError, match=r"unknown file type '\.xlsx'"):
        load_examples(other)

    with pytest.raises(DataError, match=r"not one written by datasets"):
        load_examples(tmp_path)


def test_json_array_and_missing_label_in_jsonl(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"text": "a", "label": 0}, {"text": "b", "label": 1}]))
    assert load_examples(array).texts == ["a", "b"]

    gap = _write_jsonl(tmp_path / "gap.jsonl", [{"text": "a", "label": 0}, {"text": "b"}])
    with pytest.raises(DataError, match=r"gap\.jsonl: row 1: missing value in label field"):
        load_examples(gap)


def test_subset_keeps_mapping_and_order(tmp_path):
    examples = load_examples(_write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS))
    part = examples.subset([3, 0])
    assert part.ids == ["d", "a"] and part.texts == ["awful", "good film"]
    np.testing.assert_array_equal(part.labels, [0, 2])
    assert part.label_names == examples.label_names
    assert list(part.frame["id"]) == ["d", "a"]

    masked = examples.subset(np.array([False, True, True, False]))
    assert masked.ids == ["b", "c"]
    with pytest.raises(IndexError):
        examples.subset([4])


def test_write_jsonl_preserves_columns_and_values(tmp_path):
    examples = load_examples(_write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS))
    out = write_examples(examples.subset([1, 2]), tmp_path / "out" / "sub.jsonl")

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [TEXT_ROWS[1], TEXT_ROWS[2]]
    assert [p.name for p in out.parent.iterdir()] == ["sub.jsonl"]


def test_write_csv_keeps_cells_verbatim(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,text,label,code\n1,"a, b",x,007\n2,c,y,1.50\n3,d,x,\n')
    examples = load_examples(path)
    out = write_examples(examples.subset([2, 0]), tmp_path / "sub.csv")
    assert out.read_text() == 'id,text,label,code\n3,d,x,\n1,"a, b",x,007\n'


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"f1": [0.5, 1.5, 2.5], "f2": [1, 2, 3], "label": [1, 0, 1]})
    frame.to_parquet(tmp_path / "t.parquet")
    examples = load_examples(tmp_path / "t.parquet")
    assert examples.fmt == "parquet" and examples.feature_names == ["f1", "f2"]

    out = write_examples(examples.subset([2, 1]), tmp_path / "sub.parquet")
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, frame.iloc[[2, 1]].reset_index(drop=True))


def test_hf_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["a", "b", "c"], "label": [1, 0, 1]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    examples = load_examples(tmp_path / "ds")
    assert examples.fmt == "hf" and examples.texts == ["a", "b", "c"]
    np.testing.assert_array_equal(examples.labels, [1, 0, 1])

    out = write_examples(examples.subset([2]), tmp_path / "sub")
    assert datasets.load_from_disk(str(out)).to_dict() == {"text": ["c"], "label": [1]}

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"several splits \(test, train\)"):
        load_examples(tmp_path / "dd")


def test_builtin_digits_split_is_stratified_and_seeded(tmp_path):
    train, val = load_builtin("digits")
    assert len(train) + len(val) == 1797 and abs(len(val) - 0.2 * 1797) <= 1
    assert train.features.shape == (len(train), 64) and train.image_shape == (8, 8)
    assert train.label_names == [str(d) for d in range(10)]
    assert set(train.ids).isdisjoint(val.ids)
    # Stratified: every class holds the same share of the validation set, to one example.
    share = np.bincount(val.labels) / np.bincount(np.concatenate([train.labels, val.labels]))
    assert share.max() - share.min() < 0.02

    again, _ = load_builtin("builtin:digits")
    other, _ = load_builtin("digits?seed=1")
    assert again.ids == train.ids and other.ids != train.ids
    assert load_examples("builtin:digits?split=val").ids == val.ids

    # A written subset reloads as the same feature table.
    out = write_examples(train.subset(range(20)), tmp_path / "digits.csv")
    back = load_examples(out)
    np.testing.assert_array_equal(back.features, train.features[:20])
    assert back.ids == train.ids[:20]
    np.testing.assert_array_equal(back.labels, train.labels[:20])


def test_builtin_tables_and_bad_names():
    train, val = load_builtin("wine", val_fraction=0.25)
    assert train.num_classes == 3 and train.features.shape[1] == 13
    assert len(val) == math.ceil(0.25 * 178)  # the validation split is rounded up
    cancer, _ = load_builtin("breast_cancer")
    assert cancer.label_names == ["benign", "malignant"]

    with pytest.raises(DataError, match="unknown built-in set 'mnist'"):
        load_builtin("mnist")
    with pytest.raises(DataError, match="unknown option"):
        load_builtin("digits?colour=red")


def test_fortunes_parsing_on_a_made_up_folder(tmp_path):
    folder = tmp_path / "fortunes"
    (folder / "off").mkdir(parents=True)
    (folder / "cats").write_text(
        "  A cat is a cat, said the cat.  \n%\nMeow\n%\nCats sleep\nall day long, really.\n"
        "%\nCats purr when content.\n%\n"
    )
    (folder / "dogs").write_text(
        "Dogs bark at the mailman.\n%\nA cat is a cat, said the cat.\n%\nDogs fetch sticks.\n"
    )
    (folder / "cats.dat").write_bytes(b"\x00\x01")
    (folder / "off" / "rude").write_text("hidden quote of the off folder\n%\n")

    assert read_fortunes(folder / "cats") == [
        "A cat is a cat, said the cat.", "Meow", "Cats sleep\nall day long, really.",
        "Cats purr when content.",
    ]
    train, val = load_builtin(
        "fortunes?categories=cats,dogs&n=4&min_chars=10", fortunes_dir=folder, val_fraction=0.5
    )
    # The quote found in both categories and the short one are dropped.
    texts = sorted(train.texts + val.texts)
    assert texts == [
        "Cats purr when content.", "Cats sleep\nall day long, really.",
        "Dogs bark at the mailman.", "Dogs fetch sticks.",
    ]
    assert train.label_names == ["cats", "dogs"]
    assert sorted(train.ids + val.ids) == ["cats:2", "cats:3", "dogs:0", "dogs:2"]
    np.testing.assert_array_equal(np.bincount(val.labels), [1, 1])

    with pytest.raises(DataError, match="unknown category rude; available: cats, dogs"):
        load_builtin("fortunes?categories=cats,rude", fortunes_dir=folder)
    with pytest.raises(DataError, match="install it with `apt-get install fortunes`"):
        load_builtin("fortunes", fortunes_dir=tmp_path / "absent")


def test_builtin_fortunes_default():
    if not Path("/usr/share/games/fortunes/computers").exists():
        pytest.skip("the fortunes package is not installed")
    train, val = load_builtin("fortunes")
    assert train.label_names == ["computers", "politics", "science", "work"]
    assert len(train) + len(val) == 2000
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 4)
    assert all(t == t.strip() and len(t) >= 20 for t in train.texts)
    assert set(train.ids).isdisjoint(val.ids)
