"""hyperinf: which training examples help or hurt a fine-tuned model.

Influence scores follow one sign convention everywhere: a large positive score means that
up-weighting the training example raises the query loss, i.e. the example is harmful.

The common case is one call::

    scores = hyperinf.compute_influence(model, train, queries, method="hyperinf")

and :class:`InfluenceComputer` keeps the fitted curvature to score several query sets.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "InfluenceComputer",
    "InfluenceResult",
    "SolverOptions",
    "__version__",
    "compute_influence",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import hyperinf.linalg` or the CLI's `--help` does not
    # pull in the model stack.
    if name in __all__:
        from hyperinf import scores

        return getattr(scores, name)
    raise AttributeError(f"module 'hyperinf' has no attribute {name!r}")
