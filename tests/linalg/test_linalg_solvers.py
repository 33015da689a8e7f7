import math
import warnings

import pytest
import torch
from spd_matrices import make_spd

from hyperinf.linalg import (
    ConvergenceWarning,
    cg_solve,
    cholesky_inverse,
    cholesky_solve,
    lissa_solve,
)


def _rel(X, ref):
    return float((X.double() - ref).norm() / ref.norm())


def _explicit_solve_residual(A, V, H):
    A64, V64, H64 = A.double(), V.double(), H.double()
    return torch.linalg.matrix_norm(V64 - H64 @ A64) / torch.linalg.matrix_norm(V64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cholesky_inverse_and_solve_match_torch(dtype):
    A = make_spd(12, 1e3, 1e-4, batch=(2, 3), dtype=dtype)
    V = torch.randn(3, 4, 12, dtype=dtype)
    X, rep = cholesky_inverse(A)
    tight = 1e-10 if dtype == torch.float64 else 1e-3
    assert _rel(X, torch.linalg.inv(A.double())) < tight
    assert rep.iterations.eq(0).all() and rep.shape == (2, 3)
    eye = torch.eye(12, dtype=torch.float64)
    explicit = torch.linalg.matrix_norm(eye - A.double() @ X.double()) / math.sqrt(12)
    assert torch.allclose(rep.residual, explicit, rtol=1e-6)

    H, rep = cholesky_solve(A, V)
    ref = torch.linalg.solve(A.double(), V.double().mT).mT
    assert H.shape == (2, 3, 4, 12) and _rel(H, ref) < tight
    assert torch.allclose(rep.residual, _explicit_solve_residual(A, V, H), rtol=1e-6)


def test_cholesky_names_the_non_pd_matrix():
    A = make_spd(6, 10.0, 1.0, batch=(3,))
    A[2, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"A\[2\] is not positive definite"):
        cholesky_solve(A, torch.ones(1, 6, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cg_reaches_the_cholesky_answer(dtype):
    A = make_spd(24, 1e3, 1e3, batch=(2,), dtype=dtype)
    V = torch.randn(2, 3, 24, dtype=dtype)
    V[1, 1] = 0.0
    H, rep = cg_solve(A, V)
    ref, _ = cholesky_solve(A.double(), V.double())
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert _rel(H, ref) < tol
    assert torch.equal(H[1, 1], torch.zeros(24, dtype=dtype))
    assert torch.allclose(rep.residual, _explicit_solve_residual(A, V, H), rtol=1e-6)
    assert (rep.converged | rep.stalled).all()
    if dtype == torch.float64:
        assert rep.all_converged() and (rep.iterations > 0).all()


def test_cg_reports_indefinite_matrix_as_diverged():
    A = make_spd(8, 10.0, 1.0)
    eig, Q = torch.linalg.eigh(A)
    eig[:4] = -eig[:4]
    B = (Q * eig) @ Q.T
    with pytest.warns(ConvergenceWarning, match="diverged"):
        _, rep = cg_solve((B + B.T) / 2, torch.randn(2, 8, dtype=torch.float64))
    assert bool(rep.diverged) and not bool(rep.converged)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lissa_reaches_the_cholesky_answer(dtype):
    A = make_spd(10, 5.0, 1e-6, batch=(2,), dtype=dtype)
    V = torch.randn(2, 10, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    H, rep = lissa_solve(A, V, tol=tol, max_iter=5000)
    ref, _ = cholesky_solve(A.double(), V.double().expand(2, 2, 10))
    # relative error <= cond(A) * relative residual, cond(A) = 5
    assert _rel(H, ref) < 5 * tol * 1.01
    assert rep.shape == (2,) and (rep.converged | rep.stalled).all()
    assert torch.allclose(rep.residual, _explicit_solve_residual(A, V, H), rtol=1e-6)


def test_lissa_is_slow_at_high_condition_and_says_so():
    A = make_spd(10, 1e4, 1.0)
    V = torch.randn(1, 10, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="max_iter=200"):
        H, rep = lissa_solve(A, V, max_iter=200)
    assert not bool(rep.converged) and int(rep.iterations) == 200
    assert float(rep.residual) > 1e-3
    assert torch.allclose(rep.residual, _explicit_solve_residual(A, V, H), rtol=1e-6)


def test_lissa_with_too_small_scale_diverges():
    A = make_spd(10, 10.0, 1.0)
    with pytest.warns(ConvergenceWarning, match="diverged"):
        _, rep = lissa_solve(A, torch.randn(1, 10, dtype=torch.float64), scale=0.2)
    assert bool(rep.diverged)


def test_iterative_callbacks_see_every_step():
    A = make_spd(8, 10.0, 1.0)
    V = torch.randn(2, 8, dtype=torch.float64)
    steps = []
    _, rep = cg_solve(A, V, callback=lambda k, X: steps.append(k))
    assert steps == list(range(1, int(rep.iterations) + 1))


@pytest.mark.parametrize("solver", [cg_solve, lissa_solve, cholesky_solve])
def test_solvers_reject_bad_input(solver):
    A = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="V: last dim"):
        solver(A, torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not symmetric"):
        solver(torch.triu(torch.ones(4, 4, dtype=torch.float64)), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"V\[1\] has non-finite"):
        solver(A, torch.tensor([[[1.0, 0, 0, 0]], [[math.inf, 0, 0, 0]]], dtype=torch.float64))


def test_lissa_rejects_bad_scale_and_cg_bad_tol():
    A = torch.eye(3)
    with pytest.raises(ValueError, match="scale"):
        lissa_solve(A, torch.ones(1, 3), scale=0.0)
    with pytest.raises(ValueError, match="tol"):
        cg_solve(A, torch.ones(1, 3), tol=math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H, rep = lissa_solve(A, torch.ones(1, 3))
    assert rep.all_converged() and torch.allclose(H, torch.ones(1, 3))
