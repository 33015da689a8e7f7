import logging
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spd_matrices import make_spd

from hyperinf.linalg import ConvergenceWarning, schulz_inverse, schulz_solve


def _rel_err(X, ref):
    return float((X.double() - ref).norm() / ref.norm())


def _true_residual(A, X):
    """||I - A X||_F / sqrt(d), by an explicit float64 product."""
    A64, X64 = A.double(), X.double()
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    return torch.linalg.matrix_norm(eye - A64 @ X64) / math.sqrt(A.shape[-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4, 1e8])
@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6])
def test_matches_inverse_at_every_scale(dtype, scale, cond):
    A = make_spd(32, cond, scale, batch=(2,), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        X, rep = schulz_inverse(A)
    ref = torch.linalg.inv(A.double())
    err = _rel_err(X, ref)
    # ||X - A^-1|| <= ||A^-1|| ||R||_2 and ||R||_2 <= sqrt(d) * RMS residual.
    assert err <= math.sqrt(32) * float(rep.residual.max()) * 1.01 + 1e-14
    floor = (1e-14 if dtype == torch.float64 else 3e-8) * cond
    assert err < math.sqrt(32) * rep.tol + floor
    assert X.dtype == dtype and X.shape == A.shape
    assert not rep.diverged.any()
    assert torch.allclose(rep.residual, _true_residual(A, X), rtol=1e-6, atol=0)
    assert (rep.converged | rep.stalled).all()
    if dtype == torch.float64:
        assert rep.all_converged()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(1, 12),
    log_scale=st.floats(-8, 8),
    log_cond=st.floats(0, 5),
    order=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_property_converges_fp64(d, log_scale, log_cond, order, seed):
    A = make_spd(d, 10**log_cond, 10**log_scale, seed=seed)
    X, rep = schulz_inverse(A, order=order)
    assert rep.all_converged()
    assert float(rep.residual) <= 1e-10
    assert _rel_err(X, torch.linalg.inv(A)) < 1e-9


def test_fp32_stalls_at_floor_and_says_so(caplog):
    A = make_spd(64, 1e4, 1.0, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="hyperinf.linalg.hyperpower"):
        X, rep = schulz_inverse(A, tol=1e-9, max_iter=100)
    assert bool(rep.stalled) and not bool(rep.converged) and not bool(rep.diverged)
    assert int(rep.iterations) < 30
    assert 1e-7 < float(rep.residual) < 1e-3
    assert any("floor" in r.message for r in caplog.records)

    with pytest.warns(ConvergenceWarning, match="max_iter=100"):
        X_full, rep_full = schulz_inverse(A, tol=1e-9, max_iter=100, detect_stall=False)
    assert int(rep_full.iterations) == 100
    # Running on past the floor buys nothing: the kept best iterate is as good.
    assert float(rep.residual) <= 1.5 * float(rep_full.residual)


def test_done_matrices_are_frozen():
    easy = make_spd(16, 10.0, 1.0, seed=1)
    hard = make_spd(16, 1e6, 1.0, seed=2)
    A = torch.stack([easy, hard])
    seen = []
    X, rep = schulz_inverse(A, callback=lambda k, X: seen.append(X[0].clone()))
    its = rep.iterations.tolist()
    assert its[0] < its[1]
    after_done = seen[its[0] - 1 :]
    assert all(torch.equal(x, after_done[0]) for x in after_done)
    X_alone, rep_alone = schulz_inverse(easy)
    assert int(rep_alone.iterations) == its[0]
    assert torch.allclose(X[0], X_alone, rtol=1e-12, atol=0)


def test_reference_start_diverges_at_large_scale():
    A = make_spd(16, 1e2, 1e6, batch=(2,))
    A[1] = make_spd(16, 1e2, 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, rep = schulz_inverse(A, init=5e-5, tol=0.0, max_iter=30, detect_stall=False)
    messages = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert any("1/2 matrices diverged" in m for m in messages)
    # tol=0 is never met: the well-scaled matrix runs the fixed 30 steps, as the reference does.
    assert any("1/2 matrices hit max_iter=30" in m for m in messages)
    assert rep.iterations.tolist()[1] == 30 and float(rep.residual[1]) < 1e-12
    assert rep.diverged.tolist() == [True, False]
    assert not rep.converged.any()


def test_reference_start_fails_at_small_scale_where_auto_works():
    A = make_spd(16, 1e2, 1e-5)
    ref = torch.linalg.inv(A)
    with pytest.warns(ConvergenceWarning, match="max_iter=30"):
        X_ref, rep_ref = schulz_inverse(A, init=5e-5, tol=0.0, max_iter=30, detect_stall=False)
    assert not bool(rep_ref.diverged)
    assert _rel_err(X_ref, ref) > 0.5
    X, rep = schulz_inverse(A)
    assert rep.all_converged() and _rel_err(X, ref) < 1e-10


@pytest.mark.parametrize("order", [3, 4])
def test_higher_orders_agree_with_schulz(order):
    A = make_spd(24, 1e4, 3.0, batch=(3,))
    X2, rep2 = schulz_inverse(A)
    Xp, repp = schulz_inverse(A, order=order)
    assert repp.all_converged()
    assert (repp.iterations < rep2.iterations).all()
    assert torch.allclose(Xp, X2, rtol=1e-8, atol=1e-8 * float(X2.abs().max()))


@pytest.mark.parametrize("init", ["trace", 0.01])
def test_other_starts(init):
    A = make_spd(16, 1e3, 1.0)
    X, rep = schulz_inverse(A, init=init)
    assert rep.all_converged()
    assert _rel_err(X, torch.linalg.inv(A)) < 1e-9


def test_lower_bound_start_is_no_slower():
    A = make_spd(32, 1e4, 2.0, batch=(2,))
    lam_min = torch.linalg.eigvalsh(A)[..., 0]
    _, rep = schulz_inverse(A)
    X, rep_lb = schulz_inverse(A, lower_bound=lam_min)
    assert rep_lb.all_converged()
    assert (rep_lb.iterations <= rep.iterations).all()
    assert _rel_err(X, torch.linalg.inv(A)) < 1e-9


def test_solve_equals_v_times_inverse_with_broadcasting():
    A = make_spd(16, 1e3, 1e-2, batch=(3,))
    V = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    H, rep = schulz_solve(A, V)
    ref = V @ torch.linalg.inv(A)
    assert H.shape == (2, 3, 5, 16) and rep.shape == (2, 3)
    assert torch.allclose(H, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    explicit = torch.linalg.matrix_norm(V - H @ A) / torch.linalg.matrix_norm(V)
    assert torch.allclose(rep.residual, explicit, rtol=1e-6)
    assert rep.all_converged()


def test_indefinite_input_is_reported_diverged():
    A = make_spd(8, 10.0, 1.0)
    eig, Q = torch.linalg.eigh(A)
    eig[0] = -0.5
    B = (Q * eig) @ Q.T
    B = (B + B.T) / 2
    with pytest.warns(ConvergenceWarning, match="diverged"):
        _, rep = schulz_inverse(B)
    assert bool(rep.diverged) and not bool(rep.converged)


def test_half_precision_runs_to_its_tolerance():
    A = make_spd(8, 10.0, 1.0, dtype=torch.bfloat16)
    X, rep = schulz_inverse(A)
    assert X.dtype == torch.bfloat16
    assert float(rep.residual) < 0.05


@pytest.mark.parametrize(
    ("A", "kwargs", "match"),
    [
        (torch.ones(3), {}, "stack"),
        (torch.ones(2, 3), {}, "square"),
        (torch.eye(3, dtype=torch.int64), {}, "dtype"),
        (torch.stack([torch.eye(3), torch.full((3, 3), math.nan)]), {}, r"A\[1\] has non-finite"),
        (torch.stack([torch.eye(3), torch.triu(torch.ones(3, 3))]), {}, r"A\[1\] is not symm"),
        (torch.eye(3), {"order": 1}, "order"),
        (torch.eye(3), {"init": "nope"}, "init"),
        (torch.eye(3), {"init": -1.0}, "init"),
        (torch.eye(3), {"init": "trace", "lower_bound": 0.1}, "lower_bound"),
        (torch.eye(3), {"lower_bound": -1.0}, "lower_bound"),
        (torch.eye(3), {"tol": -1.0}, "tol"),
        (torch.eye(3), {"max_iter": -2}, "max_iter"),
    ],
)
def test_bad_input_raises(A, kwargs, match):
    with pytest.raises(ValueError, match=match):
        schulz_inverse(A, **kwargs)


def test_solve_bad_rhs_raises():
    A = torch.eye(4)
    with pytest.raises(ValueError, match="V: last dim"):
        schulz_solve(A, torch.ones(2, 3))
    with pytest.raises(ValueError, match="V: dtype"):
        schulz_solve(A, torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="V: leading dims"):
        schulz_solve(torch.eye(4).expand(3, 4, 4), torch.ones(2, 1, 4))
