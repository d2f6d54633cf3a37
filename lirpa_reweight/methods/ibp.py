"""IBP (Gowal et al. 2018): interval bounds of the margins over each example's eps_i ball.

The hooks weight and read exactly these certified margins. With ``loss_fusion`` the bound is auto_LiRPA's fused
one on the cross-entropy itself (``u_i``), and the hooks read its margin ``2 exp(-u_i) - 1`` (docs/loss-fusion.md).
"""
from __future__ import annotations

from . import register
from .base import MethodOutput, check_flag


@register
class IBP:
    name = "IBP"

    def __init__(self, loss_fusion: bool = False):
        self.loss_fusion = check_flag("loss_fusion", loss_fusion)

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None,
                 clean: str = "grad") -> MethodOutput:
        if self.loss_fusion:
            logits, robust_losses = classifier.certify_fused(x, y, eps, method="IBP")
            return MethodOutput(logits, None, robust_losses)
        logits, lb = classifier.certify(x, y, eps, method="IBP", clean=clean)
        return MethodOutput(logits, lb)

    def coefficients(self, progress: float) -> dict:
        return {}
