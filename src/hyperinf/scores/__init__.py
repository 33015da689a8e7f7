"""The score stage: streaming influence passes and the methods that precondition queries.

Sign convention: ``score_i = - v^T (H + lambda I)^{-1} g_i``; positive means harmful.
"""

from hyperinf.scores.cache import GradientCache
from hyperinf.scores.engine import (
    MODES,
    InfluenceComputer,
    InfluenceResult,
    compute_influence,
)
from hyperinf.scores.loaders import as_loader, pad_collate
from hyperinf.scores.methods import METHODS, SELF_METHODS, Preconditioner, SolverOptions

__all__ = [
    "METHODS",
    "MODES",
    "SELF_METHODS",
    "GradientCache",
    "InfluenceComputer",
    "InfluenceResult",
    "Preconditioner",
    "SolverOptions",
    "as_loader",
    "compute_influence",
    "pad_collate",
]
