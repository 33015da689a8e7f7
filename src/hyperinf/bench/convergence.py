"""The paper's synthetic convergence experiment, with timings against Cholesky and a scale sweep.

For each ``(d, N)`` of a grid: ``A = (1/N) sum_i s_i s_i^T + 0.01 I`` with ``s_i ~ N(0, I_d)``
and a query ``v ~ N(0, I_d)``. Every method's iterate ``x_k`` is compared with the exact
``A^{-1} v`` (float64 Cholesky) by the relative error ``||A^{-1} v - x_k|| / ||A^{-1} v||``.

Methods: our Schulz (p = 2, p = 3; scale-aware start, residual stopping), the paper's reference
configuration (``X_0 = 5e-5 I``, a fixed 30 steps, no stopping), LiSSA (convergent default
scale), conjugate gradient, and DataInf (closed form with the ``s_i`` as per-example gradients
and ``lambda = 0.01``: one error, drawn as a horizontal line).

Outputs in ``out_dir``: ``convergence.png`` (error against iterations per ``(d, N)``),
``convergence_scales.png`` (final error when ``A`` is multiplied by 1e-6..1e6) and
``convergence.json`` (every number behind the figures, the settings, torch version, threads).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hyperinf.linalg import (
    ConvergenceWarning,
    SolverReport,
    cg_solve,
    cholesky_solve,
    datainf_solve,
    lissa_solve,
    schulz_inverse,
    schulz_solve,
)

__all__ = ["ConvergenceSettings", "run", "settings_for"]

logger = logging.getLogger(__name__)

DAMPING = 0.01
REFERENCE_ALPHA = 5e-5
REFERENCE_STEPS = 30
# Errors above this (or non-finite) are drawn at this ceiling: the method diverged.
PLOT_CEILING = 1e3
# Errors below this (exact zeros included) are drawn at this floor.
PLOT_FLOOR = 1e-16


@dataclass(frozen=True)
class ConvergenceSettings:
    """The grid and budgets of one benchmark run (written to the JSON)."""

    dims: tuple[int, ...]
    samples: tuple[int, ...]
    scales: tuple[float, ...]
    sweep_max_dim: int
    lissa_max_iter: int
    repeats: int
    damping: float = DAMPING
    reference_alpha: float = REFERENCE_ALPHA
    reference_steps: int = REFERENCE_STEPS


def settings_for(quick: bool = False, full: bool = False) -> ConvergenceSettings:
    """The default grid, the quick smoke grid, or the paper's full grid.

    Raises:
        ValueError: both ``quick`` and ``full``.
    """
    if quick and full:
        raise ValueError("quick, full: choose at most one")
    if quick:
        return ConvergenceSettings((32,), (20, 100), (1e-6, 1.0, 1e6), 32, 300, 1)
    scales = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)
    if full:
        return ConvergenceSettings(
            (512, 1024, 2048, 4096), (200, 800, 6400, 12800), scales, 1024, 2000, 3
        )
    return ConvergenceSettings((256, 512), (200, 800), scales, 512, 2000, 3)


@dataclass
class _Case:
    """One synthetic problem: ``A`` ``(d, d)``, samples ``S`` ``(N, d)``, query, answer."""

    d: int
    n: int
    A: Tensor
    S: Tensor
    v: Tensor
    x_star: Tensor


def _make_case(d: int, n: int, seed: int) -> _Case:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + d * 7919 + n)
    S = torch.randn(n, d, generator=gen, dtype=torch.float64)
    A = S.T @ S / n
    A.diagonal().add_(DAMPING)
    v = torch.randn(1, d, generator=gen, dtype=torch.float64)
    x_star, _ = cholesky_solve(A, v)
    return _Case(d, n, A, S, v, x_star)


def _rel_error(x: Tensor, x_star: Tensor) -> float:
    err = float((x.double() - x_star).norm() / x_star.norm())
    return err if math.isfinite(err) else math.inf


def _quiet(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the solvers' warnings and logs silenced: the reports record failures.

    The reference configuration and a capped LiSSA fail by design here; a warning per call
    would bury the benchmark's own log.
    """
    solver_log = logging.getLogger("hyperinf.linalg")
    level = solver_log.level
    solver_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fn()
    finally:
        solver_log.setLevel(level)


def _trace_methods(case: _Case, lissa_max_iter: int) -> tuple[dict, dict]:
    """Relative error after every iteration of each iterative method, and their reports."""
    traces: dict[str, list[float]] = {}
    reports: dict[str, SolverReport] = {}

    def inverse_tracer(name: str, v: Tensor) -> Callable[[int, Tensor], None]:
        traces[name] = []
        return lambda k, X: traces[name].append(_rel_error(v @ X, case.x_star))

    def solve_tracer(name: str) -> Callable[[int, Tensor], None]:
        traces[name] = []
        return lambda k, X: traces[name].append(_rel_error(X, case.x_star))

    A32 = case.A.float()
    schulz_runs = {
        "schulz p=2": (case.A, {}),
        "schulz p=3": (case.A, {"order": 3}),
        "schulz p=2 fp32": (A32, {}),
        "reference (5e-5 I, 30 steps)": (
            case.A,
            {"init": REFERENCE_ALPHA, "tol": 0.0, "max_iter": REFERENCE_STEPS,
             "detect_stall": False},
        ),
    }
    for name, (A, kwargs) in schulz_runs.items():
        kwargs["callback"] = inverse_tracer(name, case.v.to(A.dtype))
        _, reports[name] = _quiet(lambda A=A, kw=kwargs: schulz_inverse(A, **kw))
    _, reports["lissa"] = _quiet(
        lambda: lissa_solve(case.A, case.v, max_iter=lissa_max_iter, callback=solve_tracer("lissa"))
    )
    _, reports["cg"] = _quiet(lambda: cg_solve(case.A, case.v, callback=solve_tracer("cg")))
    return traces, reports


def _solve_fns(
    case: _Case, dtype: torch.dtype, scale: float, lissa_max_iter: int
) -> dict[str, Callable[[], tuple[Tensor, SolverReport]]]:
    """Every method as a closure returning ``(x, report)`` for ``scale * A`` in ``dtype``."""
    A = (case.A * scale).to(dtype)
    v = case.v.to(dtype)
    grads = (case.S * math.sqrt(scale)).to(dtype)
    return {
        "cholesky": lambda: cholesky_solve(A, v),
        "schulz p=2": lambda: schulz_solve(A, v),
        "schulz p=3": lambda: schulz_solve(A, v, order=3),
        "schulz trace start": lambda: schulz_solve(A, v, init="trace"),
        "reference (5e-5 I, 30 steps)": lambda: schulz_solve(
            A, v, init=REFERENCE_ALPHA, tol=0.0, max_iter=REFERENCE_STEPS, detect_stall=False
        ),
        "lissa": lambda: lissa_solve(A, v, max_iter=lissa_max_iter),
        "cg": lambda: cg_solve(A, v),
        "datainf": lambda: datainf_solve(v, grads, DAMPING * scale),
    }


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls after one untimed warm-up call, and the result."""
    best, out = math.inf, _quiet(fn)
    for _ in range(repeats):
        start = time.perf_counter()
        out = _quiet(fn)
        best = min(best, time.perf_counter() - start)
    return best, out


def _timings(case: _Case, settings: ConvergenceSettings) -> dict[str, dict[str, dict]]:
    """Wall time of each method to its tolerance, and its ratio to Cholesky, fp64 and fp32."""
    table: dict[str, dict[str, dict]] = {}
    for dtype in (torch.float64, torch.float32):
        fns = _solve_fns(case, dtype, 1.0, settings.lissa_max_iter)
        rows: dict[str, dict] = {}
        for name, fn in fns.items():
            seconds, (x, report) = _time(fn, settings.repeats)
            rows[name] = {
                "seconds": seconds,
                "converged": report.all_converged(),
                "iterations": int(report.iterations.max()),
                "rel_error": _rel_error(x, case.x_star),
            }
        base = rows["cholesky"]["seconds"]
        for row in rows.values():
            row["ratio_to_cholesky"] = row["seconds"] / base
        table[str(dtype).removeprefix("torch.")] = rows
    return table


def _sweep(case: _Case, settings: ConvergenceSettings) -> list[dict]:
    """Final relative error of every method on ``scale * A``, for each scale and dtype."""
    rows = []
    for dtype in (torch.float64, torch.float32):
        for scale in settings.scales:
            errors, converged = {}, {}
            for name, fn in _solve_fns(case, dtype, scale, settings.lissa_max_iter).items():
                x, report = _quiet(fn)
                errors[name] = _rel_error(x * scale, case.x_star)
                converged[name] = report.all_converged()
            rows.append({
                "d": case.d, "N": case.n, "dtype": str(dtype).removeprefix("torch."),
                "scale": scale, "rel_error": errors, "converged": converged,
            })
    return rows


def _run_case(case: _Case, settings: ConvergenceSettings) -> tuple[dict, list[dict]]:
    eig = torch.linalg.eigvalsh(case.A)
    traces, reports = _trace_methods(case, settings.lissa_max_iter)
    datainf_x, _ = datainf_solve(case.v, case.S, DAMPING)
    result = {
        "d": case.d,
        "N": case.n,
        "lambda_min": float(eig[0]),
        "lambda_max": float(eig[-1]),
        "cond": float(eig[-1] / eig[0]),
        "traces": traces,
        "datainf_rel_error": _rel_error(datainf_x, case.x_star),
        "reports": {name: rep.to_dict() for name, rep in reports.items()},
        "timings": _timings(case, settings),
    }
    sweep = _sweep(case, settings) if case.d <= settings.sweep_max_dim else []
    return result, sweep


def _finite_for_json(obj: Any) -> Any:
    """Replace non-finite floats by None so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_for_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_for_json(v) for v in obj]
    return obj


def _clip(values: list[float]) -> list[float]:
    """Errors into the plotted range: diverged at the ceiling, exact (0) at ``PLOT_FLOOR``."""
    return [
        min(max(v, PLOT_FLOOR), PLOT_CEILING) if math.isfinite(v) else PLOT_CEILING
        for v in values
    ]


def _finish(fig, axes, title: str, path: Path) -> None:
    """One legend below the panels, a title, and the PNG."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def _plot_convergence(cases: list[dict], settings: ConvergenceSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(settings.dims), len(settings.samples)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.8), squeeze=False)
    for case in cases:
        ax = axes[settings.dims.index(case["d"])][settings.samples.index(case["N"])]
        for name, errs in case["traces"].items():
            ax.plot(range(1, len(errs) + 1), _clip(errs), label=name, lw=1.2)
        ax.axhline(case["datainf_rel_error"], color="k", ls="--", lw=1, label="datainf")
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel="relative error")
        ax.set_title(f"d={case['d']}, N={case['N']}, cond={case['cond']:.1e}", fontsize=9)
        ax.set_ylim(PLOT_FLOOR / 2, PLOT_CEILING * 2)
        ax.grid(True, which="major", alpha=0.3)
    _finish(fig, axes, "||A^-1 v - x_k|| / ||A^-1 v||  (diverged: drawn at 1e3)", path)
    plt.close(fig)


def _plot_scales(sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["d"], r["N"]) for r in sweep})
    dtypes = ["float64", "float32"]
    fig, axes = plt.subplots(
        2, max(1, len(pairs)), figsize=(4.2 * max(1, len(pairs)), 7.6), squeeze=False
    )
    for i, dtype in enumerate(dtypes):
        for j, (d, n) in enumerate(pairs):
            rows = [r for r in sweep if r["dtype"] == dtype and (r["d"], r["N"]) == (d, n)]
            ax = axes[i][j]
            for name in rows[0]["rel_error"] if rows else []:
                errs = [r["rel_error"][name] for r in rows]
                ax.plot([r["scale"] for r in rows], _clip(errs), marker="o", ms=3, label=name)
            ax.set(xscale="log", yscale="log", xlabel="scale of A", ylabel="final rel. error")
            ax.set_title(f"{dtype}, d={d}, N={n}", fontsize=9)
            ax.set_ylim(PLOT_FLOOR / 2, PLOT_CEILING * 2)
            ax.grid(True, alpha=0.3)
    title = "A scaled by 1e-6..1e6: final relative error (diverged: drawn at 1e3)"
    _finish(fig, axes, title, path)
    plt.close(fig)


def run(out_dir: Path, quick: bool = False, full: bool = False, seed: int = 0) -> dict:
    """Run the convergence benchmark and write its figures and JSON into ``out_dir``.

    Args:
        out_dir: folder for ``convergence.png``, ``convergence_scales.png`` and
            ``convergence.json`` (created if missing).
        quick: a tiny grid for smoke tests (seconds).
        full: the paper's grid, d in {512..4096} x N in {200..12800} (hours on a CPU).
        seed: seed of the synthetic problems.

    Returns:
        The JSON's content: ``settings``, ``torch``, ``threads``, ``cases`` (traces, reports,
        ``timings[dtype][method]`` with ``seconds`` and ``ratio_to_cholesky``),
        ``scale_sweep``, ``wall_time_s`` and ``files``.

    Raises:
        ValueError: both ``quick`` and ``full``.
    """
    settings = settings_for(quick, full)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    cases, sweep = [], []
    for d in settings.dims:
        for n in settings.samples:
            logger.info("convergence benchmark: d=%d N=%d", d, n)
            case, rows = _run_case(_make_case(d, n, seed), settings)
            cases.append(case)
            sweep.extend(rows)

    files = {
        "convergence": out_dir / "convergence.png",
        "scales": out_dir / "convergence_scales.png",
        "json": out_dir / "convergence.json",
    }
    _plot_convergence(cases, settings, files["convergence"])
    _plot_scales(sweep, files["scales"])
    result = {
        "settings": asdict(settings),
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cases": cases,
        "scale_sweep": sweep,
        "wall_time_s": time.perf_counter() - start,
        "files": {k: str(v) for k, v in files.items()},
    }
    result = _finite_for_json(result)
    files["json"].write_text(json.dumps(result, indent=1, allow_nan=False))
    logger.info("convergence benchmark: wrote %s in %.1f s", out_dir, result["wall_time_s"])
    return result


def _format_row(name: str, row: dict) -> str:
    flag = "" if row["converged"] else " (not converged)"
    err = math.inf if row["rel_error"] is None else row["rel_error"]
    return (
        f"  {name:<30} {row['seconds'] * 1e3:>10.2f} ms  x{row['ratio_to_cholesky']:>8.1f}  "
        f"iters {row['iterations']:>5}  rel.err {err:.1e}{flag}"
    )


def summary(result: dict) -> str:
    """The ratio table of a :func:`run` result, as text."""
    lines = [
        f"torch {result['torch']}, {result['threads']} threads, "
        f"wall time {result['wall_time_s']:.1f} s",
        "time to tolerance / time of Cholesky (factor + solve), same matrix, same run:",
    ]
    for case in result["cases"]:
        for dtype, rows in case["timings"].items():
            lines.append(f"d={case['d']} N={case['N']} cond={case['cond']:.1e} {dtype}")
            lines += [_format_row(name, row) for name, row in rows.items()]
    lines.append("figures and numbers: " + ", ".join(result["files"].values()))
    return "\n".join(lines)
