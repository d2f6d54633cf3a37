"""IBP (Gowal et al. 2018): interval bounds of the margins over each example's eps_i ball.

The hooks weight and read exactly these certified margins.
"""
from __future__ import annotations

from . import register
from .base import MethodOutput


@register
class IBP:
    name = "IBP"

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None) -> MethodOutput:
        logits, lb = classifier.certify(x, y, eps, method="IBP")
        return MethodOutput(logits, lb)

    def coefficients(self, progress: float) -> dict:
        return {}
