"""What the training methods share: their output, coefficient ramps, the adversarial point and logit margins.

Nothing here knows the tactics: a method returns margins and (optionally) per-example losses, and the
loop hands them to ``WeightedRobustLoss`` and ``AutoEpsScheduler``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..attacks import pgd
from ..bounds import worst_case_logits_true_first
from ..distributed import GlobalBatchSlice


class MethodOutput(NamedTuple):
    """One training step's view of a batch under a method."""

    logits: torch.Tensor  # (B, C) clean logits (the kappa-weighted clean loss and the error meter use them)
    margin_lb: torch.Tensor  # (B, C-1) margins the loss trains on; eq. 6 weights and auto eps read them
    robust_losses: Optional[torch.Tensor] = None  # (B,) per-example robust losses, when not CE of [0, -margin_lb]


def check_coefficient(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def ramp(start: float, end: float, progress: float) -> float:
    """A coefficient moved linearly with the eps ramp: ``start`` at eps 0, ``end`` once eps_train is reached."""
    return start + (end - start) * progress


@dataclass(frozen=True)
class AttackSettings:
    """The training attack (:func:`lirpa_reweight.attacks.pgd`): steps, step size, restarts, and the attack
    radius ``eps_scale * eps_i`` (CC-IBP / MTL-IBP attack a ball larger than eps at 2/255); the step size is a
    multiple of that attack radius."""

    steps: int = 1
    step_size: Optional[float] = None
    restarts: int = 1
    eps_scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"attack.steps must be an integer >= 0, got {self.steps!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"attack.restarts must be an integer >= 1, got {self.restarts!r}")
        if self.step_size is not None and not (math.isfinite(float(self.step_size)) and self.step_size > 0):
            raise ValueError(f"attack.step_size must be a number > 0 (a multiple of eps) or null, got {self.step_size!r}")
        if (isinstance(self.eps_scale, bool) or not isinstance(self.eps_scale, (int, float))
                or not (math.isfinite(self.eps_scale) and self.eps_scale > 0)):
            raise ValueError(f"attack.eps_scale must be a number > 0 (the attack radius over eps_i), "
                             f"got {self.eps_scale!r}")

    @classmethod
    def from_options(cls, options: Optional[dict]) -> "AttackSettings":
        options = dict(options or {})
        unknown = sorted(set(options) - {"steps", "step_size", "restarts", "eps_scale"})
        if unknown:
            raise ValueError(f"unknown attack option(s) {unknown}; allowed: steps, step_size, restarts, eps_scale")
        return cls(**options)


def adversarial_point(classifier, x: torch.Tensor, y: torch.Tensor, eps, attack: AttackSettings,
                      batch_slice: Optional[GlobalBatchSlice] = None) -> torch.Tensor:
    """A PGD point inside each example's own ball of radius ``attack.eps_scale * eps_i`` (clamped to the data
    range); the clean ``x`` for a 0-step attack.

    The attack runs in eval mode, so that it neither uses nor updates train-mode BatchNorm statistics
    (as CTRAIN and SABR's code do); the caller's mode is restored. ``batch_slice``: this rank's rows of the
    global batch under data parallelism (the random starts then match one process's), None for one process.
    """
    was_training = classifier.training
    classifier.eval()
    try:
        return pgd(classifier, x, y, eps * attack.eps_scale, steps=attack.steps, restarts=attack.restarts,
                   step_size=attack.step_size, batch_slice=batch_slice).x_adv
    finally:
        classifier.train(was_training)


def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C-1)`` margins ``z_y - z_j`` for ``j != y``, class order with ``y`` skipped (the layout of bounds)."""
    others = y.unsqueeze(1) != torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    return (logits.gather(1, y.unsqueeze(1)) - logits)[others].view(logits.shape[0], -1)


def margin_cross_entropy(margins: torch.Tensor) -> torch.Tensor:
    """Per-example CE of the logit vector ``[0, -margins]`` (true class first): the loss of IBP training."""
    return F.cross_entropy(worst_case_logits_true_first(margins),
                           margins.new_zeros(margins.shape[0], dtype=torch.long), reduction="none")


class AdversarialMix:
    """The part CC-IBP and MTL-IBP share: a coefficient ``alpha`` ramped from ``alpha_start`` to ``alpha_end``
    (1: IBP, 0: adversarial training), and an attack inside each example's own ball of ``attack.eps_scale * eps_i``."""

    def __init__(self, alpha_start: float = 0.5, alpha_end: Optional[float] = None, attack: Optional[dict] = None):
        self.alpha_start = check_coefficient("alpha_start", alpha_start)
        self.alpha_end = self.alpha_start if alpha_end is None else check_coefficient("alpha_end", alpha_end)
        self.attack = AttackSettings.from_options(attack)

    def alpha(self, progress: float) -> float:
        return ramp(self.alpha_start, self.alpha_end, progress)

    def adversarial_and_ibp(self, classifier, x, y, eps, batch_slice: Optional[GlobalBatchSlice] = None):
        """The logits at the attack point, then the clean logits and IBP margin bounds over the eps_i balls.

        The bound pass comes last, so that the bounded module still holds its intermediate bounds afterwards
        (a plain forward clears them): the warm-up regulariser reads them after the method.
        """
        x_adv = adversarial_point(classifier, x, y, eps, self.attack, batch_slice)
        adv_logits = classifier(x_adv)
        logits, ibp_lb = classifier.certify(x, y, eps, method="IBP")
        return adv_logits, logits, ibp_lb

    def coefficients(self, progress: float) -> dict:
        return {"alpha": self.alpha(progress)}
