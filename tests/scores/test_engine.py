"""The influence engine against brute-force formulas on models small enough to do by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hyperinf import InfluenceComputer, compute_influence
from hyperinf.scores import METHODS

C = 0.1


@pytest.fixture(scope="module")
def logistic():
    """Logistic regression (2 logits, no bias) on standardised breast_cancer."""
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 2, bias=False))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[:400]), y[:400]).backward()
        optimiser.step()
    train = TensorDataset(x[:120], y[:120])
    val = TensorDataset(x[400:440], y[400:440])
    return model.eval(), train, val


def loop_gradients(model: nn.Module, dataset) -> torch.Tensor:
    """Per-example gradients of every weight, by one backward() per example: (n, r, d).

    The gradients are float32 like the engine's, so comparisons allow about 1e-6 relative.
    """
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    rows = []
    for x, y in dataset:
        model.zero_grad()
        nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        rows.append([w.grad.detach().clone().double() for w in weights])
        model.zero_grad()
    return [torch.stack([row[k] for row in rows]) for k in range(len(weights))]


def brute_force(model, train, val, curvature: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-v^T (H + lambda I)^{-1} g_i and self-influence per example, block-diagonal."""
    scores, selfs = 0.0, 0.0
    for g, q in zip(loop_gradients(model, train), loop_gradients(model, val)):
        n, r, d = g.shape
        lam = C * g.square().sum(dim=(1, 2)).mean() / (r * d)
        v = q.mean(dim=0)
        if curvature == "fim":
            flat = g.reshape(n, -1)
            matrix = flat.T @ flat / n + lam * torch.eye(r * d, dtype=torch.float64)
            h = torch.linalg.solve(matrix, v.reshape(-1))
            scores = scores - flat @ h
            selfs = selfs + (flat * torch.linalg.solve(matrix, flat.T).T).sum(1)
        elif curvature == "gfim":
            gram = torch.einsum("nrd,nre->de", g, g) / (n * r)
            matrix = gram + lam * torch.eye(d, dtype=torch.float64)
            h = torch.linalg.solve(matrix, v.T).T
            scores = scores - torch.einsum("nrd,rd->n", g, h)
            preconditioned = torch.linalg.solve(matrix, g.transpose(1, 2)).transpose(1, 2)
            selfs = selfs + (g * preconditioned).sum(dim=(1, 2))
        elif curvature == "datainf":
            flat, vf = g.reshape(n, -1), v.reshape(-1)
            eye = torch.eye(r * d, dtype=torch.float64)
            inverse = sum(torch.linalg.inv(torch.outer(f, f) + lam * eye) for f in flat) / n
            scores = scores - flat @ (inverse @ vf)
        else:
            scores = scores - torch.einsum("nrd,rd->n", g, v)
            selfs = selfs + g.square().sum(dim=(1, 2))
    return scores, selfs


def fitted(model, train, methods, **kwargs) -> InfluenceComputer:
    computer = InfluenceComputer(model, methods, progress=False, batch_size=32, **kwargs)
    return computer.fit(train)


@pytest.mark.parametrize(
    ("method", "curvature", "rtol"),
    [
        ("exact", "fim", 1e-6),
        ("hyperinf-fim", "fim", 1e-5),
        ("exact-gfim", "gfim", 1e-6),
        ("hyperinf", "gfim", 1e-5),
        ("tracin", "dot", 1e-6),
        ("datainf", "datainf", 1e-6),
        ("lissa", "gfim", 1e-3),
    ],
)
def test_average_scores_match_brute_force(logistic, method, curvature, rtol):
    model, train, val = logistic
    expected, _ = brute_force(model, train, val, curvature)

    solver = None
    if method == "lissa":
        from hyperinf import SolverOptions

        solver = SolverOptions(lissa_max_iter=20000, lissa_tol=1e-9)
    result = fitted(model, train, [method], solver=solver).score(val)

    scores = result.scores[method].double()
    scale = expected.abs().max()
    assert torch.allclose(scores, expected, rtol=0, atol=rtol * scale)
    for report in result.reports[method].values():
        assert report["converged"]


@pytest.mark.parametrize(
    ("method", "curvature"),
    [
        ("exact", "fim"),
        ("hyperinf-fim", "fim"),
        ("exact-gfim", "gfim"),
        ("hyperinf", "gfim"),
        ("tracin", "dot"),
    ],
)
def test_self_influence_matches_brute_force(logistic, method, curvature):
    model, train, val = logistic
    _, expected = brute_force(model, train, val, curvature)

    result = fitted(model, train, [method]).score(mode="self")

    assert torch.allclose(result.scores[method].double(), expected, rtol=1e-5)
    assert (result.scores[method] > 0).all()


def test_hyperinf_equals_exact_gfim_and_fim_variants_agree(logistic):
    model, train, val = logistic
    methods = ["hyperinf", "exact-gfim", "hyperinf-fim", "exact"]
    result = fitted(model, train, methods).score(val)
    s = {m: result.scores[m].double() for m in methods}
    assert torch.allclose(s["hyperinf"], s["exact-gfim"], atol=1e-5 * s["exact-gfim"].abs().max())
    assert torch.allclose(s["hyperinf-fim"], s["exact"], atol=1e-5 * s["exact"].abs().max())


def test_pairwise_columns_average_to_the_average_mode(logistic):
    model, train, val = logistic
    computer = fitted(model, train, ["hyperinf", "datainf", "tracin"])

    average = computer.score(val, mode="average")
    pairwise = computer.score(val, mode="pairwise")

    for method in ("hyperinf", "datainf", "tracin"):
        matrix = pairwise.scores[method]
        assert matrix.shape == (len(train), len(val))
        assert torch.allclose(matrix.mean(dim=1), average.scores[method], rtol=1e-5, atol=1e-9)


def test_block_shares_sum_to_one_and_blocks_add_up(logistic):
    model, train, val = logistic
    result = fitted(model, train, ["hyperinf"]).score(val)
    parts = result.block_scores["hyperinf"]
    assert torch.allclose(parts.sum(dim=1), result.scores["hyperinf"])
    assert sum(result.block_variance_share("hyperinf").values()) == pytest.approx(1.0)


def test_losses_are_the_per_example_training_losses(logistic):
    model, train, _ = logistic
    x, y = train.tensors
    expected = nn.functional.cross_entropy(model(x), y, reduction="none")
    computer = fitted(model, train, ["tracin"])
    assert torch.allclose(computer.train_losses, expected.detach(), atol=1e-6)


def test_two_blocks_of_an_mlp_match_brute_force(logistic):
    _, train, val = logistic
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(30, 8, bias=False), nn.Tanh(), nn.Linear(8, 2, bias=False))
    expected, _ = brute_force(mlp.eval(), train, val, "gfim")
    result = fitted(mlp, train, ["exact-gfim"]).score(val)
    assert len(result.blocks) == 2
    scores = result.scores["exact-gfim"].double()
    assert torch.allclose(scores, expected, rtol=0, atol=1e-6 * expected.abs().max())


def test_compute_influence_one_call(logistic):
    model, train, val = logistic
    expected, _ = brute_force(model, train, val, "gfim")
    scores = compute_influence(model, train, val, method="hyperinf", progress=False)
    assert scores.shape == (len(train),)
    assert torch.allclose(scores.double(), expected, atol=1e-5 * expected.abs().max())


def test_gradient_cache_gives_the_same_scores_and_resumes(logistic, tmp_path):
    model, train, val = logistic
    plain = fitted(model, train, ["hyperinf", "datainf"]).score(val)
    cached = fitted(model, train, ["hyperinf", "datainf"], cache_dir=tmp_path).score(val)
    for method in ("hyperinf", "datainf"):
        assert torch.allclose(plain.scores[method], cached.scores[method], atol=1e-7)

    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        again = fitted(model, train, ["hyperinf"], cache_dir=tmp_path).score(val)
    finally:
        hook.remove()
    batches_of_val = -(-len(val) // 32)
    assert len(calls) == batches_of_val
    assert torch.allclose(again.scores["hyperinf"], plain.scores["hyperinf"], atol=1e-7)


def test_data_loader_and_dataset_give_the_same_scores(logistic):
    model, train, val = logistic
    from_dataset = fitted(model, train, ["tracin"]).score(val).scores["tracin"]
    loader = DataLoader(train, batch_size=7, shuffle=False)
    from_loader = fitted(model, loader, ["tracin"]).score(val).scores["tracin"]
    assert torch.allclose(from_dataset, from_loader, atol=1e-7)


def test_every_method_name_is_accepted(logistic):
    model, train, val = logistic
    result = fitted(model, train, list(METHODS)).score(val)
    assert set(result.scores) == set(METHODS)
    assert all(np.isfinite(s.numpy()).all() for s in result.scores.values())


class TestBadInput:
    def test_no_trainable_blocks(self):
        frozen = nn.Sequential(nn.Linear(30, 2, bias=False)).requires_grad_(False)
        with pytest.raises(ValueError, match="trainable"):
            InfluenceComputer(frozen, progress=False)

    def test_pattern_matching_nothing(self, logistic):
        model, _, _ = logistic
        with pytest.raises(ValueError, match="nope"):
            InfluenceComputer(model, blocks=["nope*"], progress=False)

    def test_empty_dataset(self, logistic):
        model, _, _ = logistic
        empty = TensorDataset(torch.zeros(0, 30), torch.zeros(0, dtype=torch.long))
        with pytest.raises(ValueError, match="empty"):
            InfluenceComputer(model, progress=False).fit(empty)

    def test_nan_gradient_names_the_example(self, logistic):
        model, train, _ = logistic
        x, y = (t.clone() for t in train.tensors)
        x[37, 3] = float("nan")
        with pytest.raises(ValueError, match="37"):
            InfluenceComputer(model, progress=False, batch_size=16).fit(TensorDataset(x, y))

    def test_mismatched_batch_structure(self, logistic):
        model, _, _ = logistic
        batches = [(torch.zeros(4, 30), torch.zeros(3, dtype=torch.long))]
        with pytest.raises(ValueError, match="batch"):
            InfluenceComputer(model, progress=False).fit(batches)

    def test_fim_of_a_large_block_is_refused_with_the_alternative(self):
        big = nn.Sequential(nn.Linear(1024, 16, bias=False))
        with pytest.raises(ValueError, match="hyperinf"):
            InfluenceComputer(big, ["exact"], progress=False)

    def test_unknown_method_and_mode(self, logistic):
        model, train, val = logistic
        with pytest.raises(ValueError, match="unknown method"):
            InfluenceComputer(model, ["schulz"], progress=False)
        computer = fitted(model, train, ["tracin"])
        with pytest.raises(ValueError, match="mode"):
            computer.score(val, mode="sideways")

    def test_self_influence_of_datainf_says_what_to_use(self, logistic):
        model, train, _ = logistic
        with pytest.raises(NotImplementedError, match="hyperinf"):
            fitted(model, train, ["datainf"]).score(mode="self")

    def test_shuffling_loader_is_refused(self, logistic):
        model, train, _ = logistic
        with pytest.raises(ValueError, match="shuffle"):
            InfluenceComputer(model, progress=False).fit(DataLoader(train, shuffle=True))
