"""Curvature stage: streaming GFIM / FIM accumulators and the damping of every block.

Per block, with per-example gradients `g_i` of shape `(r, d)` (row-major `vec`):

- GFIM `G = (1 / (n r)) sum_i g_i^T g_i`, shape `(d, d)`;
- FIM `F = (1 / n) sum_i vec(g_i) vec(g_i)^T`, shape `(r d, r d)` (small blocks only);
- damping `lambda = c * mean_i ||g_i||_F^2 / (r d)`, `c = 0.1` by default.

Pure tensor math; the only file it touches is the safetensors file of `CurvatureSet.save`.
"""

from hyperinf.curvature._validation import check_damping_scale
from hyperinf.curvature.accumulators import (
    DEFAULT_DAMPING_SCALE,
    DEFAULT_MAX_FIM_DIM,
    KINDS,
    BlockAccumulator,
    FIMAccumulator,
    GFIMAccumulator,
    gfim_from_fim,
    make_accumulator,
)
from hyperinf.curvature.curvature_set import CurvatureSet
from hyperinf.curvature.errors import (
    BlockNameError,
    BlockShapeError,
    CurvatureError,
    CurvatureFileError,
    EmptyCurvatureError,
    FIMTooLargeError,
    IncompatibleCurvatureError,
    NonFiniteGradientError,
)
from hyperinf.curvature.storage import FORMAT_VERSION

__all__ = [
    "DEFAULT_DAMPING_SCALE",
    "DEFAULT_MAX_FIM_DIM",
    "FORMAT_VERSION",
    "KINDS",
    "BlockAccumulator",
    "BlockNameError",
    "BlockShapeError",
    "CurvatureError",
    "CurvatureFileError",
    "CurvatureSet",
    "EmptyCurvatureError",
    "FIMAccumulator",
    "FIMTooLargeError",
    "GFIMAccumulator",
    "IncompatibleCurvatureError",
    "NonFiniteGradientError",
    "check_damping_scale",
    "gfim_from_fim",
    "make_accumulator",
]
