"""CROWN-IBP (Zhang et al. 2020): ``beta * crown_ibp + (1 - beta) * ibp`` margins, beta moved with the eps ramp
from ``beta_start`` to ``beta_end`` (1 -> 0 in the paper and in every preset).

The hooks weight and read the mixed margins: the bound the loss trains on, a certificate at every beta. With
``loss_fusion`` the mix is of the fused upper bounds of the cross-entropy (as upstream's CIFAR example mixes them),
and the hooks read the fused margin ``2 exp(-u_i) - 1`` (docs/loss-fusion.md).
"""
from __future__ import annotations

from . import register
from .base import MethodOutput, check_coefficient, check_flag, interpolate


@register
class CROWNIBP:
    name = "CROWN-IBP"

    def __init__(self, beta_start: float = 1.0, beta_end: float = 0.0, loss_fusion: bool = False):
        self.beta_start = check_coefficient("beta_start", beta_start)
        self.beta_end = check_coefficient("beta_end", beta_end)
        self.loss_fusion = check_flag("loss_fusion", loss_fusion)

    def beta(self, progress: float) -> float:
        return interpolate(self.beta_start, self.beta_end, progress)

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None,
                 clean: str = "grad") -> MethodOutput:
        if self.loss_fusion:
            logits, robust_losses = classifier.certify_fused(x, y, eps, method="CROWN-IBP", beta=self.beta(progress))
            return MethodOutput(logits, None, robust_losses)
        logits, lb = classifier.certify(x, y, eps, method="CROWN-IBP", beta=self.beta(progress),
                                        clean=clean)
        return MethodOutput(logits, lb)

    def coefficients(self, progress: float) -> dict:
        return {"beta": self.beta(progress)}
