"""The influence engine: streaming passes over training and query data.

Pass 1 reads the training data once and accumulates the curvature blocks (and the damping)
without keeping any gradient. The query gradients are then computed and preconditioned by
every method. Pass 2 recomputes the training gradients and scores them. DataInf, whose
preconditioned vector depends on every training gradient, takes one more pass in between.
Memory therefore does not grow with the number of training examples (apart from the scores
themselves). With a gradient cache, pass 1 writes the gradients to disk and the later passes
read them back instead of running the model again.

Sign convention: ``score_i = - v^T (H + lambda I)^{-1} g_i``; a large positive score means
up-weighting training example ``i`` raises the query loss (the example is harmful).
Self-influence is reported as ``+ g_i^T (H + lambda I)^{-1} g_i``, so that for both a large
score is the suspicious end.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hyperinf.curvature import CurvatureSet
from hyperinf.gradients import Block, find_blocks, per_example_gradients, trim_padding
from hyperinf.linalg import ConvergenceWarning
from hyperinf.scores.cache import GradientCache
from hyperinf.scores.loaders import as_loader
from hyperinf.scores.methods import (
    FIM_METHODS,
    SELF_METHODS,
    DataInfPass,
    Preconditioner,
    SolverOptions,
    fit_inverse,
    lissa_apply,
    parse_methods,
)

logger = logging.getLogger(__name__)

MODES = ("average", "pairwise", "self")
LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass
class InfluenceResult:
    """Scores of one query set, with everything needed to trust them.

    Attributes:
        mode: ``average`` (scores ``(n,)``), ``pairwise`` (``(n, m)``) or ``self`` (``(n,)``).
        scores: Per method, the influence scores. Positive means harmful (self-influence:
            large means the example is hard to fit by the rest of the data).
        block_scores: Per method, ``(n, B)`` contributions of each block to the score
            (average and self modes), in the order of ``blocks``.
        losses: ``(n,)`` training loss of each example under the model.
        blocks: The blocks scored.
        damping: Per block, lambda.
        reports: Per method, per block, the solver report (iterations, residual, converged).
        seconds: Wall time by phase.
    """

    mode: str
    scores: dict[str, Tensor]
    block_scores: dict[str, Tensor]
    losses: Tensor
    blocks: list[Block]
    damping: dict[str, float]
    reports: dict[str, dict[str, dict[str, Any]]]
    seconds: dict[str, float]

    def block_variance_share(self, method: str) -> dict[str, float]:
        """Each block's share of the variance of ``method``'s scores.

        The share of block ``b`` is ``cov(s_b, s) / var(s)``, where ``s_b`` is the block's
        contribution and ``s`` the total score; the shares sum to 1 (one can be negative
        when a block works against the others).
        """
        parts = self.block_scores[method].to(torch.float64)
        total = parts.sum(dim=1)
        centred = total - total.mean()
        variance = centred.square().sum()
        if variance == 0:
            return {block.name: float("nan") for block in self.blocks}
        shares = ((parts - parts.mean(dim=0)) * centred[:, None]).sum(dim=0) / variance
        return {block.name: float(share) for block, share in zip(self.blocks, shares)}


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


class InfluenceComputer:
    """Fits the curvature of a model on training data once and scores query sets.

    Args:
        model: The fine-tuned model. It is put in ``eval()`` mode during each pass and left
            as it was; its weights are not changed.
        methods: Methods to prepare, see :data:`hyperinf.scores.methods.METHODS`.
        blocks: Blocks to use: ``None`` for every trainable LoRA matrix and dense
            ``nn.Linear`` weight, a list of name patterns (globs), or a list of blocks.
        loss_fn: ``loss_fn(model, batch) -> (b,)`` per-example losses; by default
            cross-entropy on the logits (causal language-modelling loss for 3-D logits).
        damping: The constant ``c`` of ``lambda = c * mean ||g||^2 / (r d)`` per block.
        batch_size: Examples per batch when datasets (not data loaders) are given.
        backend: Per-example gradients by ``"hooks"`` or ``"func"`` (torch.func).
        solver: Options of the iterative solvers.
        max_fim_dim: Largest ``r d`` for which the full FIM is built.
        cache_dir: Optional folder for an on-disk gradient cache of the training data; one
            folder belongs to one model and one training set (shards on disk are reused).
        progress: Show progress bars.
    """

    def __init__(
        self,
        model: nn.Module,
        methods: str | Sequence[str] = ("hyperinf",),
        *,
        blocks: Sequence[str] | Sequence[Block] | None = None,
        loss_fn: LossFn | None = None,
        damping: float = 0.1,
        batch_size: int = 16,
        backend: str = "hooks",
        solver: SolverOptions | None = None,
        max_fim_dim: int = 4096,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        if damping <= 0:
            raise ValueError(f"damping must be positive, got {damping}")
        self.model = model
        self.methods = parse_methods(methods)
        self.blocks = self._resolve_blocks(model, blocks)
        self.loss_fn = loss_fn
        self.damping_constant = damping
        self.batch_size = batch_size
        self.backend = backend
        self.solver = solver or SolverOptions()
        self.max_fim_dim = max_fim_dim
        self.progress = progress
        self.device = next(model.parameters()).device
        self._check_fim_sizes()
        layout = {block.name: (block.r, block.d) for block in self.blocks}
        self.cache = GradientCache(cache_dir, layout) if cache_dir is not None else None

        self.curvature: CurvatureSet | None = None
        self.train_losses: Tensor | None = None
        self._train: Iterable | None = None
        self._offsets: list[int] = []
        self._preconditioners: dict[str, Preconditioner] = {}
        self._timer = _Timer()

    @staticmethod
    def _resolve_blocks(model: nn.Module, blocks: Any) -> list[Block]:
        if blocks and all(isinstance(block, Block) for block in blocks):
            return list(blocks)
        if isinstance(blocks, str):
            blocks = [blocks]
        return find_blocks(model, include=blocks or None)

    def _check_fim_sizes(self) -> None:
        wanted = [method for method in self.methods if method in FIM_METHODS]
        if not wanted:
            return
        for block in self.blocks:
            size = block.r * block.d
            if size > self.max_fim_dim:
                gib = size * size * 8 / 2**30
                raise ValueError(
                    f"method {wanted[0]!r} needs the full FIM of block {block.name!r}, "
                    f"{size} x {size} ({gib:.1f} GiB in float64), above max_fim_dim="
                    f"{self.max_fim_dim}; use 'hyperinf' or 'exact-gfim' (the GFIM, "
                    f"{block.d} x {block.d}) instead, or select smaller blocks"
                )

    @property
    def seconds(self) -> dict[str, float]:
        """Wall time by phase: gradients, curvature, cache, inverse/<method>, scoring."""
        return dict(self._timer.seconds)

    @property
    def n_train(self) -> int:
        return 0 if self.curvature is None else self.curvature.n

    def _bar(self, iterable: Iterable, desc: str) -> Iterable:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False)

    def _gradients(self, batch: Any, offset: int) -> tuple[dict[str, Tensor], Tensor]:
        with self._timer("gradients"):
            return per_example_gradients(
                self.model,
                trim_padding(batch) if isinstance(batch, Mapping) else batch,
                self.blocks,
                self.loss_fn,
                backend=self.backend,
                offset=offset,
            )

    def _train_batches(self, desc: str) -> Iterator[tuple[int, dict[str, Tensor], Tensor]]:
        """Yield ``(offset, grads, losses)`` of the training data, from the cache if any."""
        if self.cache is not None and self._offsets:
            for offset in self._bar(self._offsets, desc):
                with self._timer("cache"):
                    grads, losses = self.cache.read(offset, device=str(self.device))
                yield offset, grads, losses
            return
        offset = 0
        for batch in self._bar(self._train, desc):
            grads, losses = self._gradients(batch, offset)
            yield offset, grads, losses
            offset += losses.shape[0]

    def fit(self, train: Any) -> InfluenceComputer:
        """Pass 1: accumulate the curvature and damping of every block over ``train``.

        Args:
            train: A map-style dataset or an ordered data loader of the model's batches.

        Returns:
            ``self``, fitted.
        """
        self._train = as_loader(train, self.batch_size)
        self._preconditioners.clear()
        needs_fim = any(method in FIM_METHODS for method in self.methods)
        curvature = CurvatureSet(
            {block.name: (block.r, block.d) for block in self.blocks},
            kinds=("gfim", "fim") if needs_fim else ("gfim",),
            device=self.device,
            max_fim_dim=self.max_fim_dim,
        )
        losses, offsets, offset = [], [], 0
        for batch in self._bar(self._train, "pass 1: curvature"):
            if self.cache is not None and self.cache.has(offset):
                grads, batch_losses = self.cache.read(offset, device=str(self.device))
            else:
                grads, batch_losses = self._gradients(batch, offset)
                if self.cache is not None:
                    self.cache.write(offset, grads, batch_losses)
            with self._timer("curvature"):
                curvature.update(grads, offset=offset)
            losses.append(batch_losses.detach().cpu())
            offsets.append(offset)
            offset += batch_losses.shape[0]
        if offset == 0:
            raise ValueError("the training data is empty")

        self.curvature = curvature
        self.train_losses = torch.cat(losses)
        self._offsets = offsets if self.cache is not None else []
        for block in self.blocks:
            logger.info("block %s: lambda = %.3e", block.name, self.dampings[block.name])
        return self

    @property
    def dampings(self) -> dict[str, float]:
        """Per block, lambda."""
        self._require_fit()
        assert self.curvature is not None
        return self.curvature.dampings(self.damping_constant)

    def _require_fit(self) -> None:
        if self.curvature is None:
            raise RuntimeError("call fit(train) before scoring")

    def _damped(self, kind: str) -> dict[str, Tensor]:
        assert self.curvature is not None
        return {
            block.name: self.curvature.accumulator(block.name, kind).damped(self.damping_constant)
            for block in self.blocks
        }

    def preconditioner(self, method: str) -> Preconditioner:
        """The fitted matrix method ``method`` (computed once, then kept)."""
        self._require_fit()
        if method not in self._preconditioners:
            with self._timer(f"inverse/{method}"):
                if method == "tracin":
                    preconditioner = Preconditioner("tracin")
                else:
                    kind = "fim" if method in FIM_METHODS else "gfim"
                    preconditioner = fit_inverse(
                        method, self._damped(kind), self.dampings, self.solver
                    )
            self._warn_unconverged(method, preconditioner.reports)
            self._preconditioners[method] = preconditioner
        return self._preconditioners[method]

    def _warn_unconverged(self, method: str, reports: Mapping[str, Mapping[str, Any]]) -> None:
        bad = [name for name, report in reports.items() if not report.get("converged", True)]
        if bad:
            residuals = [reports[name]["residual"] for name in bad]
            worst = max(float("nan") if r is None else float(r) for r in residuals)
            warnings.warn(
                f"{method}: {len(bad)} of {len(reports)} blocks did not reach the solver "
                f"tolerance (worst residual {worst:.2e}); see the per-block reports",
                ConvergenceWarning,
                stacklevel=3,
            )

    def query_gradients(self, queries: Any, mode: str = "average") -> dict[str, Tensor]:
        """Gradients of the query loss per block.

        Args:
            queries: A dataset or data loader of query batches.
            mode: ``average`` returns the mean gradient ``(1, r, d)``; ``pairwise`` every
                query's gradient ``(m, r, d)``.
        """
        loader = as_loader(queries, self.batch_size)
        sums: dict[str, Tensor] = {}
        stacks: dict[str, list[Tensor]] = defaultdict(list)
        count = 0
        for batch in self._bar(loader, "queries"):
            grads, losses = self._gradients(batch, count)
            count += losses.shape[0]
            for name, grad in grads.items():
                if mode == "average":
                    total = grad.to(torch.float64).sum(dim=0, keepdim=True)
                    sums[name] = sums[name] + total if name in sums else total
                else:
                    stacks[name].append(grad.to(torch.float64))
        if count == 0:
            raise ValueError("the query data is empty")
        if mode == "average":
            return {name: total / count for name, total in sums.items()}
        return {name: torch.cat(parts) for name, parts in stacks.items()}

    def score(
        self, queries: Any = None, mode: str = "average", methods: Sequence[str] | None = None
    ) -> InfluenceResult:
        """Pass 2: influence scores of every training example for every method.

        Args:
            queries: Query data (validation or test examples); not used in ``self`` mode.
            mode: ``average``, ``pairwise`` or ``self``.
            methods: A subset of the prepared methods; all of them by default.

        Returns:
            The scores with the per-block reports and timings.
        """
        self._require_fit()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        methods = self._select(methods)
        if mode == "self":
            return self._score_self(methods)
        if queries is None:
            raise ValueError(f"mode {mode!r} needs queries")

        vectors = self.query_gradients(queries, mode)
        preconditioned, reports = self._precondition(vectors, methods)

        scores: dict[str, list[Tensor]] = defaultdict(list)
        parts: dict[str, list[Tensor]] = defaultdict(list)
        for _, grads, _ in self._train_batches("pass 2: scores"):
            with self._timer("scoring"):
                for method, h in preconditioned.items():
                    per_block = -self._dot(grads, h)
                    if mode == "average":
                        per_block = per_block[:, 0, :]
                        parts[method].append(per_block.cpu())
                    scores[method].append(per_block.sum(dim=-1).cpu())
        return self._result(mode, scores, parts, reports)

    def _select(self, methods: Sequence[str] | None) -> tuple[str, ...]:
        if methods is None:
            return self.methods
        chosen = parse_methods(methods)
        missing = [method for method in chosen if method not in self.methods]
        if missing:
            raise ValueError(
                f"method {missing[0]!r} was not prepared; create the computer with it in "
                f"methods (prepared: {', '.join(self.methods)})"
            )
        return chosen

    def _precondition(
        self, vectors: Mapping[str, Tensor], methods: Sequence[str]
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, dict[str, Any]]]]:
        out, reports = {}, {}
        for method in methods:
            if method == "datainf":
                continue
            if method == "lissa":
                with self._timer("inverse/lissa"):
                    out[method], reports[method] = lissa_apply(
                        self._damped("gfim"), self.dampings, vectors, self.solver
                    )
                self._warn_unconverged(method, reports[method])
                continue
            preconditioner = self.preconditioner(method)
            with self._timer(f"inverse/{method}"):
                out[method] = preconditioner.apply(vectors)
            reports[method] = preconditioner.reports
        if "datainf" in methods:
            datainf = DataInfPass(vectors, self.dampings)
            for _, grads, _ in self._train_batches("datainf pass"):
                with self._timer("inverse/datainf"):
                    datainf.update(grads)
            out["datainf"], reports["datainf"] = datainf.result()
        return out, reports

    def _dot(self, grads: Mapping[str, Tensor], h: Mapping[str, Tensor]) -> Tensor:
        """Per-block inner products ``<g_i, h_j>``, shape ``(b, m, B)``."""
        columns = [
            torch.einsum("brd,mrd->bm", grads[block.name].to(h[block.name].dtype), h[block.name])
            for block in self.blocks
        ]
        return torch.stack(columns, dim=-1)

    def _score_self(self, methods: Sequence[str]) -> InfluenceResult:
        unsupported = [method for method in methods if method not in SELF_METHODS]
        if unsupported:
            raise NotImplementedError(
                f"self-influence is not available for {', '.join(unsupported)} (it would need "
                "one solve per training example); use one of " + ", ".join(SELF_METHODS)
            )
        preconditioners = {method: self.preconditioner(method) for method in methods}
        scores: dict[str, list[Tensor]] = defaultdict(list)
        parts: dict[str, list[Tensor]] = defaultdict(list)
        for _, grads, _ in self._train_batches("pass 2: self-influence"):
            with self._timer("scoring"):
                for method, preconditioner in preconditioners.items():
                    h = preconditioner.apply(grads)
                    columns = [
                        (grads[b.name].to(h[b.name].dtype) * h[b.name]).flatten(1).sum(dim=1)
                        for b in self.blocks
                    ]
                    per_block = torch.stack(columns, dim=-1)
                    scores[method].append(per_block.sum(dim=-1).cpu())
                    parts[method].append(per_block.cpu())
        reports = {method: p.reports for method, p in preconditioners.items()}
        return self._result("self", scores, parts, reports)

    def _result(
        self,
        mode: str,
        scores: Mapping[str, list[Tensor]],
        parts: Mapping[str, list[Tensor]],
        reports: dict[str, dict[str, dict[str, Any]]],
    ) -> InfluenceResult:
        assert self.train_losses is not None
        return InfluenceResult(
            mode=mode,
            scores={method: torch.cat(chunks) for method, chunks in scores.items()},
            block_scores={method: torch.cat(chunks) for method, chunks in parts.items()},
            losses=self.train_losses.clone(),
            blocks=list(self.blocks),
            damping=self.dampings,
            reports=reports,
            seconds=self.seconds,
        )


def compute_influence(
    model: nn.Module,
    train: Any,
    queries: Any = None,
    method: str = "hyperinf",
    mode: str = "average",
    loss_fn: LossFn | None = None,
    blocks: Sequence[str] | None = None,
    batch_size: int = 16,
    **options: Any,
) -> Tensor:
    """Influence scores of the training examples on the queries, in one call.

    Args:
        model: The fine-tuned model (a PEFT model, or any ``nn.Module``).
        train: The training data: a dataset or an ordered data loader of the model's own
            batches (dicts of tensors, or ``(inputs, targets)`` tuples).
        queries: Validation or test data in the same form; unused for ``mode="self"``.
        method: One of :data:`hyperinf.scores.methods.METHODS`.
        mode: ``average`` (one score per training example against the mean query
            gradient), ``pairwise`` (one per training example and query) or ``self``.
        loss_fn: ``loss_fn(model, batch) -> (b,)`` per-example losses.
        blocks: Name patterns of the blocks to use; every trainable block by default.
        batch_size: Examples per batch for datasets.
        **options: Further arguments of :class:`InfluenceComputer`.

    Returns:
        Scores of shape ``(n,)`` (average, self) or ``(n, m)`` (pairwise). Positive means
        harmful: up-weighting the example raises the query loss. Self-influence scores are
        ``g^T (H + lambda I)^{-1} g`` (large: hard to fit from the other examples).
    """
    computer = InfluenceComputer(
        model,
        methods=(method,),
        blocks=blocks,
        loss_fn=loss_fn,
        batch_size=batch_size,
        **options,
    )
    computer.fit(train)
    return computer.score(queries, mode=mode).scores[method]
