"""Argument checks shared by the curvature modules."""

import math
import numbers

import torch


def positive_int(value: int, argument: str) -> int:
    """Returns `value` as an int, or raises ValueError naming `argument`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value: int, argument: str) -> int:
    """Returns `value` as an int, or raises ValueError naming `argument`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{argument} must be a non-negative integer, got {value!r}")
    return int(value)


def floating_dtype(dtype: torch.dtype) -> torch.dtype:
    """Returns `dtype` if it is a real floating-point dtype, else raises ValueError."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a real floating-point torch.dtype, got {dtype!r}")
    return dtype


def check_damping_scale(c: float) -> float:
    """Validates the damping scale `c` of `lambda = c * mean_i ||g_i||_F^2 / (r d)`.

    Args:
        c: Damping scale; a finite real number > 0.

    Returns:
        `c` as a float.

    Raises:
        ValueError: If `c` is not a finite real number > 0.
    """
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise ValueError(f"c (the damping scale) must be a real number > 0, got {c!r}")
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"c (the damping scale) must be finite and > 0, got {c!r}")
    return float(c)
