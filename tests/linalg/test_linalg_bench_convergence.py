import json
import math

import pytest

from hyperinf.bench.convergence import run, settings_for


def test_quick_run_writes_figures_and_json(tmp_path):
    result = run(tmp_path, quick=True)
    for name in ("convergence.png", "convergence_scales.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    saved = json.loads((tmp_path / "convergence.json").read_text())
    assert saved["settings"]["dims"] == [32]
    assert saved["threads"] >= 1 and saved["torch"]

    case = saved["cases"][0]
    ours = case["traces"]["schulz p=2"]
    assert ours[-1] < 1e-10 and len(ours) < 40
    assert len(case["traces"]["reference (5e-5 I, 30 steps)"]) == 30
    fp64 = case["timings"]["float64"]
    assert fp64["cholesky"]["ratio_to_cholesky"] == 1.0
    assert fp64["schulz p=2"]["converged"] and fp64["schulz p=2"]["rel_error"] < 1e-9

    # At 1e6 the reference start 5e-5 exceeds 2 / lambda_max: it diverges; ours does not.
    big = [r for r in saved["scale_sweep"] if r["scale"] == 1e6 and r["dtype"] == "float64"]
    assert all(r["rel_error"]["reference (5e-5 I, 30 steps)"] in (None, math.inf) or
               r["rel_error"]["reference (5e-5 I, 30 steps)"] > 1 for r in big)
    assert all(r["rel_error"]["schulz p=2"] < 1e-9 for r in big)
    assert result["files"]["json"].endswith("convergence.json")


def test_quick_and_full_are_exclusive():
    with pytest.raises(ValueError, match="quick, full"):
        settings_for(quick=True, full=True)
