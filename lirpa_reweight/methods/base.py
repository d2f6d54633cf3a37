"""What every training method shares: its output and the coefficients it moves with the eps ramp.

Nothing here knows the tactics: a method returns margins and (optionally) per-example losses, and the
trainer hands them to ``WeightedRobustLoss`` and ``AutoEpsScheduler``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..errors import ArgumentError


class MethodOutput(NamedTuple):
    """One training step's view of a batch under a method."""

    logits: Optional[torch.Tensor]  # (B, C) clean logits (the kappa-weighted clean loss and the error meter use
    # them); None when the step asked for none (clean="none", kappa 0) and the graph could skip their pass
    margin_lb: Optional[torch.Tensor]  # (B, C-1) margins the loss trains on; eq. 6 weights and auto eps read them.
    # None under loss fusion: then robust_losses are the bounds u_i of the robust CE, and the hooks read
    # fused_margin(u_i) (core/margins.py).
    robust_losses: Optional[torch.Tensor] = None  # (B,) per-example robust losses, when not CE of [0, -margin_lb]


def check_flag(name: str, value) -> bool:
    """``value`` as a bool, or :class:`~lirpa_reweight.errors.ArgumentError` naming ``name``."""
    if not isinstance(value, bool):
        raise ArgumentError(name, value, "true or false")
    return value


def check_coefficient(name: str, value) -> float:
    """``value`` as a float in [0, 1], or :class:`~lirpa_reweight.errors.ArgumentError` naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ArgumentError(name, value, "a number in [0, 1]")
    return number


def interpolate(start: float, end: float, progress: float) -> float:
    """A coefficient moved linearly with the eps ramp: ``start`` at eps 0, ``end`` once eps_train is reached
    (``progress`` in [0, 1], as :func:`lirpa_reweight.training.trainer.ramp_progress` gives it)."""
    return start + (end - start) * progress
