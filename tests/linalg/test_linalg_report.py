import json
import math

import pytest
import torch

from hyperinf.linalg import SolverReport


def _report(method="schulz", residual=(1e-12, 1e-3, math.nan), tol=1e-10):
    return SolverReport.from_residual(
        method,
        torch.tensor(residual, dtype=torch.float64),
        tol,
        iterations=torch.tensor([3, 7, 9]),
        stalled=torch.tensor([False, True, False]),
        diverged=torch.tensor([False, False, True]),
    )


def test_converged_follows_residual_and_tol():
    rep = _report()
    assert rep.converged.tolist() == [True, False, False]
    assert not rep.all_converged()
    assert rep.shape == (3,) and len(rep) == 3


def test_to_dict_is_strict_json():
    rep = _report()
    text = json.dumps(rep.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["residual"] == [1e-12, 1e-3, None]
    assert back["iterations"] == [3, 7, 9]
    assert back["shape"] == [3]


def test_index_concat_and_per_block():
    a, b = _report(), _report(residual=(1e-11, 1e-11, 1e-11))
    both = SolverReport.concat([a, b])
    assert len(both) == 6
    assert both[4] == {
        "method": "schulz", "iterations": 7, "residual": 1e-11, "converged": True,
        "stalled": True, "diverged": False, "tol": 1e-10,
    }
    assert both[-1]["diverged"]
    named = a.per_block(["q", "k", "v"])
    assert named["k"]["residual"] == 1e-3
    with pytest.raises(IndexError):
        a[3]
    with pytest.raises(ValueError, match="names"):
        a.per_block(["q"])


def test_concat_refuses_mixed_methods():
    with pytest.raises(ValueError, match=r"reports\[1\]"):
        SolverReport.concat([_report(), _report(method="cg")])


def test_summary_names_counts():
    line = _report().summary()
    assert line.startswith("schulz: iterations max 9 median 7")
    assert "1/3 converged, 1 stalled, 1 diverged" in line
    assert "non-finite" in line
