"""`hyperinf detect`, `select` and the error paths, end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hyperinf.cli.main import main
from hyperinf.tasks.finetune import make_tiny_text_model
from hyperinf.tasks.metrics import detection_at, detection_auc

WORDS = {
    "space": "star planet orbit rocket moon galaxy comet launch",
    "food": "bread cheese apple soup pasta butter honey salad",
    "sport": "goal match team score coach league ball referee",
}



def make_texts(n_per_class: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in WORDS.items():
        vocabulary = words.split()
        for _ in range(n_per_class):
            text = " ".join(rng.choice(vocabulary, size=rng.integers(4, 9)))
            rows.append({"text": text, "label": label})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    train, val = make_texts(20, 0), make_texts(6, 1)
    train.to_json(folder / "train.jsonl", orient="records", lines=True)
    val.to_json(folder / "val.jsonl", orient="records", lines=True)
    model = make_tiny_text_model(folder / "bert", list(train.text), max_length=32)
    return folder, model


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_detect_on_noisy_digits_beats_random(tmp_path, capsys):
    out = tmp_path / "digits"
    code, stdout, _ = run(
        ["detect", "--train", "builtin:digits", "--noise", "0.2", "--method", "hyperinf,tracin",
         "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0
    assert "hyperinf" in stdout
    for name in ("scores.parquet", "scores.csv", "report.json", "detection.png", "suspicious.png"):
        assert (out / name).stat().st_size > 0

    report = json.loads((out / "report.json").read_text())
    table = pd.read_parquet(out / "scores.parquet")
    assert report["n_train"] == len(table) == 1437
    assert report["noise_rate"] == 0.2
    assert table["flipped"].sum() == round(0.2 * len(table))
    flipped = table["flipped"].to_numpy()
    for method in ("hyperinf", "tracin", "loss", "self:hyperinf"):
        scores = table[method].to_numpy()
        entry = report["methods"][method]
        assert entry["auc"] == pytest.approx(detection_auc(scores, flipped))
        assert entry["detection"] == pytest.approx(detection_at(scores, flipped))
        assert set(entry["detection"]) == {"0.1", "0.2", "0.3", "0.5"}
    assert report["methods"]["hyperinf"]["auc"] > 0.7
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert (np.diff(table["hyperinf"].to_numpy()) <= 0).all()
    shares = report["block_variance_share"]["hyperinf"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(row["converged"] for row in report["solver"]["hyperinf"].values())
    assert {"torch", "transformers", "peft"} <= set(report["versions"])


def test_detect_on_text_with_a_tiny_bert(text_files, tmp_path, capsys):
    folder, model = text_files
    out = tmp_path / "text"
    code, stdout, _ = run(
        ["detect", "--train", str(folder / "train.jsonl"), "--val", str(folder / "val.jsonl"),
         "--model", str(model), "--epochs", "3", "--lr", "3e-3", "--lora-rank", "4",
         "--noise", "0.2", "--method", "hyperinf,datainf,lissa,tracin,exact-gfim",
         "--max-length", "32", "--batch-size", "8", "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0
    table = pd.read_parquet(out / "scores.parquet")
    report = json.loads((out / "report.json").read_text())
    assert len(table) == 60 and report["n_val"] == 18
    assert {"text", "label", "predicted", "flipped"} <= set(table.columns)
    assert {b["kind"] for b in report["blocks"]} == {"lora_A", "lora_B", "dense"}
    for method in ("hyperinf", "datainf", "lissa", "tracin", "exact-gfim", "loss"):
        assert np.isfinite(table[method]).all()
        assert 0.0 <= report["methods"][method]["auc"] <= 1.0
    assert np.allclose(table["hyperinf"], table["exact-gfim"], rtol=1e-3, atol=1e-6)
    assert "most suspicious" in stdout


def test_detect_without_noise_says_there_is_no_ground_truth(tmp_path, capsys):
    code, stdout, _ = run(
        ["detect", "--train", "builtin:wine", "--method", "hyperinf", "--out",
         str(tmp_path / "w"), "--no-progress"],
        capsys,
    )
    assert code == 0
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert report["ground_truth"] is False
    assert "auc" not in report["methods"]["hyperinf"]
    assert "no ground truth" in stdout


def test_select_writes_the_most_helpful_rows_in_the_input_format(tmp_path, capsys):
    from sklearn.datasets import load_wine

    features, labels = load_wine(return_X_y=True, as_frame=True)
    frame = features.assign(label=labels)
    frame.iloc[:140].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[140:].to_csv(tmp_path / "val.csv", index=False)
    out = tmp_path / "sel"
    code, stdout, _ = run(
        ["select", "--train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv"),
         "--fraction", "0.25", "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0
    selection = pd.read_csv(out / "selection.csv")
    selected = pd.read_csv(out / "selected.csv")
    keep = int(np.ceil(0.25 * 140))
    expected_ids = selection.sort_values(["score", "id"]).head(keep)["id"].sort_values()
    assert selection["selected"].sum() == keep == len(selected)
    assert sorted(selection.loc[selection["selected"], "id"]) == list(expected_ids)
    original = pd.read_csv(tmp_path / "train.csv")
    pd.testing.assert_frame_equal(
        selected.reset_index(drop=True), original.iloc[list(expected_ids)].reset_index(drop=True)
    )
    assert "kept 35 of 140" in stdout


def test_select_evaluate_reports_the_three_comparisons(tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, _ = run(
        ["select", "--train", "builtin:breast_cancer", "--fraction", "0.5", "--evaluate",
         "--random-seeds", "2", "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0
    evaluation = json.loads((out / "report.json").read_text())["evaluation"]
    assert set(evaluation["accuracy"]) == {"influence", "full", "random-0", "random-1"}
    assert all(0.5 < v <= 1.0 for v in evaluation["accuracy"].values())
    assert (out / "selection.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["detect", "--train", "missing.jsonl", "--val", "missing.jsonl"], "missing.jsonl"),
        (["detect", "--train", "{train}", "--val", "{train}", "--label-field", "stars"],
         "stars"),
        (["detect", "--train", "{one_class}", "--val", "{one_class}"], "single class"),
        (["detect", "--train", "{empty}", "--val", "{empty}"], "empty.jsonl"),
        (["detect", "--train", "{train}", "--val", "{train}", "--model", "{not_a_model}"],
         "not_a_model"),
        (["select", "--train", "builtin:wine", "--fraction", "1.5"], "fraction"),
        (["select", "--train", "builtin:wine", "--fraction", "0"], "fraction"),
        (["detect", "--train", "builtin:wine", "--method", "schulz"], "schulz"),
        (["detect", "--train", "builtin:wine", "--noise", "1.2"], "noise"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, expected, text_files, tmp_path, capsys):
    folder, _ = text_files
    (tmp_path / "empty.jsonl").write_text("")
    pd.DataFrame({"text": ["a b", "c d"], "label": ["x", "x"]}).to_json(
        tmp_path / "one.jsonl", orient="records", lines=True
    )
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("hello")
    names = {
        "train": str(folder / "train.jsonl"),
        "one_class": str(tmp_path / "one.jsonl"),
        "empty": str(tmp_path / "empty.jsonl"),
        "not_a_model": str(tmp_path / "not_a_model"),
    }
    argv = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "o"), "--no-progress"]
    code, _, stderr = run(argv, capsys)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("hyperinf")]
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in stderr


def test_a_failed_run_leaves_an_existing_out_untouched(text_files, tmp_path, capsys):
    folder, _ = text_files
    out = tmp_path / "keep"
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')
    code, _, _ = run(
        ["detect", "--train", str(folder / "train.jsonl"), "--val", str(folder / "val.jsonl"),
         "--text-field", "body", "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 2
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert json.loads((out / "report.json").read_text()) == {"earlier": True}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keep")]


def test_console_script_help_and_error_exit_code(tmp_path):
    help_run = subprocess.run(
        [sys.executable, "-m", "hyperinf.cli.main", "--help"], capture_output=True, text=True
    )
    assert help_run.returncode == 0
    for command in ("detect", "select", "demo", "bench"):
        assert command in help_run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hyperinf.cli.main", "select", "--train", "builtin:wine",
         "--fraction", "2", "--out", str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "fraction" in bad.stderr
