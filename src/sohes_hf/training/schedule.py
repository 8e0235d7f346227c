"""Learning-rate schedule, precomputed before the loop, and the batch-size scaling rule.

Paper appendix A gives Adan with base lr 8e-4 at batch 128 for 40k steps and nothing else; the
warm-up and decay shapes are ViT-Adapter's Mask2Former conventions (see ``config.py``).

Scaling rule: Adan, like Adam, normalises each coordinate's step by a running second moment, so
the update size does not grow with the gradient's scale the way SGD's does. The SDE analysis of
adaptive optimisers (Malladi et al., NeurIPS 2022) gives the *square-root* rule for them:
``lr = base_lr * sqrt(batch / base_batch)`` (with betas adjusted as well, which we do not do for
the modest batch ratios this recipe is used with). The linear rule (Goyal et al., 2017) is the
SGD rule and is offered for comparison; "none" keeps the base rate.
"""

from __future__ import annotations

import math

import numpy as np


def scale_learning_rate(base_learning_rate: float, base_batch_size: int, batch_size: int, rule: str) -> float:
    """Learning rate for ``batch_size`` given the rate tuned at ``base_batch_size``.

    Args:
        base_learning_rate: rate at the base batch size (paper A: 8e-4).
        base_batch_size: paper A: 128.
        batch_size: the global batch size actually used.
        rule: "sqrt", "linear" or "none".

    Raises:
        ValueError: unknown rule or non-positive sizes.
    """
    if base_batch_size < 1 or batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got base {base_batch_size}, batch {batch_size}")
    ratio = batch_size / base_batch_size
    if rule == "sqrt":
        return base_learning_rate * math.sqrt(ratio)
    if rule == "linear":
        return base_learning_rate * ratio
    if rule == "none":
        return base_learning_rate
    raise ValueError(f"lr_scaling must be one of sqrt, linear, none; got {rule!r}")


def learning_rate_multipliers(
    num_steps: int, warmup_steps: int, schedule: str, poly_power: float = 1.0, min_ratio: float = 0.0
) -> np.ndarray:
    """Per-step learning-rate factors, computed once before training.

    Step t (0-based) gets ``(t + 1) / warmup_steps`` during warm-up, then ``schedule`` decays
    from 1 to ``min_ratio`` over the remaining steps: "poly" is ``(1 - progress) ** poly_power``,
    "cosine" is ``0.5 (1 + cos(pi progress))``, "constant" stays 1.

    Args:
        num_steps: number of optimizer steps.
        warmup_steps: linear warm-up length (may be 0).
        schedule: "poly", "cosine" or "constant".
        poly_power: exponent of "poly".
        min_ratio: final factor of the decay.

    Returns:
        (num_steps,) float64 factors in [0, 1].

    Raises:
        ValueError: an argument is out of range (named).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    steps = np.arange(num_steps, dtype=np.float64)
    warm = min(warmup_steps, num_steps)
    decay_steps = max(num_steps - warm, 1)
    progress = np.clip((steps - warm) / decay_steps, 0.0, 1.0)
    if schedule == "poly":
        if poly_power <= 0:
            raise ValueError(f"poly_power must be > 0, got {poly_power}")
        decay = (1.0 - progress) ** poly_power
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + np.cos(math.pi * progress))
    elif schedule == "constant":
        decay = np.ones_like(progress)
    else:
        raise ValueError(f"schedule must be one of poly, cosine, constant; got {schedule!r}")
    factors = min_ratio + (1.0 - min_ratio) * decay
    if warm > 0:
        factors[:warm] = (steps[:warm] + 1.0) / warm
    return factors
