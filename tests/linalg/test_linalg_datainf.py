import math

import pytest
import torch

from hyperinf.linalg import DataInfAccumulator, datainf_solve


def _brute_force(V, grads, lam):
    """mean_i (g_i g_i^T + lam I)^{-1} applied to each flattened query, by explicit inverses."""
    n = grads.shape[0]
    G = grads.reshape(n, -1).double()
    p = G.shape[1]
    eye = torch.eye(p, dtype=torch.float64)
    avg = sum(torch.linalg.inv(torch.outer(g, g) + lam * eye) for g in G) / n
    return (V.reshape(V.shape[0], -1).double() @ avg).reshape(V.shape)


@pytest.mark.parametrize("block", [(2, 3), (5,)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_equals_average_of_sherman_morrison_inverses(block, dtype):
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(20, *block, generator=gen, dtype=dtype)
    V = torch.randn(4, *block, generator=gen, dtype=dtype)
    H, rep = datainf_solve(V, grads, damping=0.3)
    ref = _brute_force(V, grads, 0.3)
    assert H.shape == V.shape and H.dtype == dtype
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(H.double(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert rep.method == "datainf" and rep.all_converged()
    assert int(rep.iterations) == 0 and math.isnan(float(rep.residual))


def test_streaming_equals_in_memory_and_merge_is_exact():
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(30, 3, 4, generator=gen, dtype=torch.float32)
    V = torch.randn(2, 3, 4, generator=gen, dtype=torch.float32)
    H_mem, _ = datainf_solve(V, grads, 0.05)

    acc = DataInfAccumulator(V, 0.05)
    for batch in grads.split(7):
        acc.update(batch)
    assert acc.n == 30
    H_stream, _ = acc.result()
    assert torch.allclose(H_stream, H_mem, rtol=1e-6, atol=0)

    # Sums are float64 inside: merging partial accumulators agrees to float64 rounding.
    V64, grads64 = V.double(), grads.double()
    whole, _ = datainf_solve(V64, grads64, 0.05)
    left = DataInfAccumulator(V64, 0.05).update(grads64[:11])
    right = DataInfAccumulator(V64, 0.05).update(grads64[11:])
    H_merged, _ = left.merge(right).result()
    assert left.n == 30
    assert torch.allclose(H_merged, whole, rtol=0, atol=1e-13 * float(whole.abs().max()))
    assert torch.allclose(H_merged.float(), H_mem, rtol=1e-6, atol=0)


def test_stack_of_blocks_with_per_block_damping():
    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(3, 15, 2, 4, generator=gen, dtype=torch.float64)
    V = torch.randn(3, 5, 2, 4, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.1, 1.0, 0.01], dtype=torch.float64)
    H, rep = datainf_solve(V, grads, lam, block_ndim=2)
    assert rep.shape == (3,)
    for b in range(3):
        assert torch.allclose(H[b], _brute_force(V[b], grads[b], float(lam[b])), rtol=1e-10)


def test_bad_input_raises():
    V = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="damping"):
        DataInfAccumulator(V, 0.0)
    with pytest.raises(ValueError, match="grads: shape"):
        datainf_solve(V, torch.ones(5, 4, 3), 0.1)
    bad = torch.ones(6, 3, 4)
    bad[4, 1, 2] = math.nan
    acc = DataInfAccumulator(V, 0.1).update(torch.ones(3, 3, 4))
    with pytest.raises(ValueError, match="training example 7"):
        acc.update(bad)
    with pytest.raises(ValueError, match="n = 0"):
        DataInfAccumulator(V, 0.1).result()
    with pytest.raises(ValueError, match="other"):
        DataInfAccumulator(V, 0.1).merge(DataInfAccumulator(V, 0.2))
    with pytest.raises(ValueError, match="dtype"):
        datainf_solve(V.long(), torch.ones(2, 3, 4), 0.1)
