"""Solvers for the damped curvature blocks: pure tensor math on stacks ``(..., d, d)``.

Every solver returns ``(result, SolverReport)``; nothing unconverged is returned silently.
Right-hand sides are rows: a solve returns ``V A^{-1}`` for ``V`` of shape ``(..., m, d)``.
"""

from hyperinf.linalg.datainf import DataInfAccumulator, datainf_solve
from hyperinf.linalg.hyperpower import schulz_inverse, schulz_solve
from hyperinf.linalg.report import ConvergenceWarning, SolverReport
from hyperinf.linalg.solvers import cg_solve, cholesky_inverse, cholesky_solve, lissa_solve

__all__ = [
    "ConvergenceWarning",
    "DataInfAccumulator",
    "SolverReport",
    "cg_solve",
    "cholesky_inverse",
    "cholesky_solve",
    "datainf_solve",
    "lissa_solve",
    "schulz_inverse",
    "schulz_solve",
]
