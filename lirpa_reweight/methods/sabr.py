"""SABR (Mueller et al., ICLR 2023): IBP over a small box of radius ``lambda * eps_i`` around a PGD point.

Each step: PGD finds ``x_adv`` inside the example's own ball ``B(x, eps_i)`` (clamped to the data
range); the small box of half-width ``lambda`` times the ball's is centred at ``x_adv``, its centre
projected so that the box lies inside the ball; IBP bounds that small box. With per-example eps
(``AutoEpsScheduler``) both the attack and the small box live inside each example's own ball, so a
shrunk eps_i shrinks the small box with it.

What the hooks see: ``margin_lb`` are the IBP margins over the *small box*. They bound the margin in a
sub-region only (not a certificate for the whole ball), but they are the worst-case logits SABR's
loss trains on, so ``WeightedRobustLoss`` weights examples by how close that loss's logits are to the
decision boundary, and ``AutoEpsScheduler`` shrinks eps_i where even the small box is not robust.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ArgumentError
from . import register
from .attack import AttackSettings, adversarial_point
from .base import MethodOutput, check_coefficient, interpolate


def small_box(x_adv: torch.Tensor, x_low: torch.Tensor, x_high: torch.Tensor,
              ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of ``ratio`` times the width of ``[x_low, x_high]``, centred at ``x_adv`` and slid inside it.

    Written as a shift inside the room the small box has, so that ``ratio = 1`` gives back
    ``[x_low, x_high]`` exactly.
    """
    width = x_high - x_low
    room = (1.0 - ratio) * width  # how far the small box can slide inside the ball
    shift = torch.min(torch.max(x_adv - x_low - ratio * width / 2, torch.zeros_like(room)), room)
    return x_low + shift, x_high - (room - shift)


@register
class SABR:
    name = "SABR"

    def __init__(self, lambda_start: float = 0.4, lambda_end: Optional[float] = None, attack: Optional[dict] = None):
        self.lambda_start = check_coefficient("lambda_start", lambda_start)
        self.lambda_end = self.lambda_start if lambda_end is None else check_coefficient("lambda_end", lambda_end)
        self.attack = AttackSettings.from_options(attack)
        if self.attack.eps_scale != 1:  # the small box must lie inside the ball it is a part of
            raise ArgumentError("attack.eps_scale", self.attack.eps_scale,
                                "1 for SABR (its small box lives inside each example's eps_i ball)")

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None,
                 clean: str = "grad") -> MethodOutput:
        ratio = interpolate(self.lambda_start, self.lambda_end, progress)
        x_adv = adversarial_point(classifier, x, y, eps, self.attack, batch_slice)
        box = small_box(x_adv, *classifier.input_box(x, eps), ratio)
        logits, lb = classifier.certify(x, y, eps, method="IBP", box=box, clean=clean)
        return MethodOutput(logits, lb)

    def coefficients(self, progress: float) -> dict:
        return {"sabr_lambda": interpolate(self.lambda_start, self.lambda_end, progress)}
