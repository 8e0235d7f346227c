"""The size-dependent score threshold for the teacher's pseudo-labels (paper section 3.3, eq. 3).

The teacher is less confident on small entities, so one fixed score threshold keeps too few small
pseudo-labels and the student's small-entity recall drops (paper Table 3, row 2). Eq. (3) lowers the
threshold for small masks::

    theta_score = (1 - (1 - a) ** gamma) * (theta_large - theta_small) + theta_small

where ``a`` is the mask's area divided by the image area. With gamma = 200 the threshold reaches
half-way between the two end points at a ~= 0.35 % of the image (about 60 x 60 px at 1024 px) and is
within 1 % of ``theta_large`` above a ~= 2.3 %.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", float, np.ndarray, torch.Tensor)

THETA_SCORE_LARGE = 0.7
"""Threshold for a mask covering the whole image (appendix A)."""
THETA_SCORE_SMALL = 0.3
"""Threshold for a vanishingly small mask (appendix A)."""
GAMMA = 200.0
"""Steepness of the transition from small to large (appendix A)."""


def validate_dynamic_threshold_parameters(theta_large: float, theta_small: float, gamma: float) -> None:
    """Raises ValueError naming the parameter when eq. (3)'s constraints do not hold.

    The paper requires ``theta_small < theta_large`` and ``gamma > 1``; both thresholds are scores
    in [0, 1].
    """
    for name, value in (("theta_large", theta_large), ("theta_small", theta_small)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not theta_small < theta_large:
        raise ValueError(
            f"theta_small must be smaller than theta_large (eq. 3), got theta_small={theta_small}, "
            f"theta_large={theta_large}"
        )
    if not gamma > 1.0:
        raise ValueError(f"gamma must be > 1 (eq. 3), got {gamma}")


def dynamic_score_threshold(
    area_ratio: ArrayLike,
    theta_large: float = THETA_SCORE_LARGE,
    theta_small: float = THETA_SCORE_SMALL,
    gamma: float = GAMMA,
) -> ArrayLike:
    """Score threshold of eq. (3) for masks covering ``area_ratio`` of the image.

    Args:
        area_ratio: mask area / image area, in [0, 1]; a Python float, a numpy array or a torch
            tensor of any shape. The paper writes a in (0, 1); the end points are accepted and give
            ``theta_small`` (a = 0) and ``theta_large`` (a = 1).
        theta_large: threshold approached by large masks (``theta_score, large``).
        theta_small: threshold approached by tiny masks (``theta_score, small``).
        gamma: steepness, > 1.

    Returns:
        The thresholds, same type (and for arrays, shape; for tensors, device and floating dtype)
        as ``area_ratio``.

    Raises:
        ValueError: a parameter breaks eq. (3)'s constraints, or an area ratio is outside [0, 1] or NaN.
        TypeError: ``area_ratio`` is not a float, numpy array or torch tensor.
    """
    validate_dynamic_threshold_parameters(theta_large, theta_small, gamma)
    span = theta_large - theta_small
    if isinstance(area_ratio, torch.Tensor):
        ratio = area_ratio if area_ratio.is_floating_point() else area_ratio.double()
        if ratio.numel() and not bool(((ratio >= 0) & (ratio <= 1)).all()):
            raise ValueError("area_ratio must lie in [0, 1] (mask area / image area)")
        return (1.0 - (1.0 - ratio) ** gamma) * span + theta_small
    if isinstance(area_ratio, np.ndarray):
        ratio_np = area_ratio.astype(np.float64, copy=False)
        if ratio_np.size and not bool(((ratio_np >= 0) & (ratio_np <= 1)).all()):
            raise ValueError("area_ratio must lie in [0, 1] (mask area / image area)")
        return (1.0 - (1.0 - ratio_np) ** gamma) * span + theta_small
    if isinstance(area_ratio, (bool, np.bool_)) or not isinstance(area_ratio, (int, float, np.floating)):
        raise TypeError(
            f"area_ratio must be a float, numpy array or torch tensor, got {type(area_ratio).__name__}"
        )
    value = float(area_ratio)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"area_ratio must lie in [0, 1] (mask area / image area), got {value}")
    return (1.0 - (1.0 - value) ** gamma) * span + theta_small
