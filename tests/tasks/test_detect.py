"""Pieces of `detect` and `select` that the end-to-end tests do not pin down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperinf.scores.engine import InfluenceResult
from hyperinf.tasks.detect import _by_length, _in_dataset_order, preview
from hyperinf.tasks.pipeline import UsageError, output_folder
from hyperinf.tasks.select import select_helpful


class Texts:
    def __init__(self, lengths):
        self._lengths = lengths

    def lengths(self):
        return self._lengths


def test_scores_computed_in_length_order_come_back_in_dataset_order():
    lengths = [5, 2, 9, 2, 7]
    order = _by_length(Texts(lengths))
    assert list(order) == [1, 3, 0, 4, 2]
    in_dataset_order = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0])
    permuted = in_dataset_order[torch.from_numpy(order)]
    result = InfluenceResult(
        mode="average",
        scores={"m": permuted.clone()},
        block_scores={"m": torch.stack([permuted, -permuted], dim=1)},
        losses=permuted.clone(),
        blocks=[],
        damping={},
        reports={},
        seconds={},
    )
    restored = _in_dataset_order(result, order)
    assert torch.equal(restored.scores["m"], in_dataset_order)
    assert torch.equal(restored.losses, in_dataset_order)
    assert torch.equal(restored.block_scores["m"][:, 1], -in_dataset_order)
    assert _by_length(object()) is None


def test_select_helpful_keeps_the_most_negative_with_ties_by_index():
    scores = np.array([0.5, -1.0, -1.0, 2.0, -3.0, 0.0])
    assert list(select_helpful(scores, 0.5)) == [1, 2, 4]
    assert list(select_helpful(scores, 0.3)) == [1, 4]


def test_select_helpful_rounds_up_and_keeps_at_least_one():
    scores = np.array([3.0, 1.0, 2.0])
    assert list(select_helpful(scores, 0.01)) == [1]
    assert list(select_helpful(scores, 0.5)) == [1, 2]
    assert list(select_helpful(scores, 1.0)) == [0, 1, 2]


def test_preview_is_one_line_and_short():
    text = "first line\n\tsecond   line " + "x" * 200
    line = preview(text)
    assert "\n" not in line and "\t" not in line and len(line) == 80
    assert line.startswith("first line second line") and line.endswith("…")
    assert preview("short") == "short"


def test_output_folder_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), output_folder(out) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    with output_folder(out) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"), output_folder(tmp_path / "file"):
        pass
