"""MTL-IBP (De Palma et al., ICLR 2024): per example ``(1 - a) * CE(z(x_adv), y) + a * CE_IBP``.

The loss is a mix of two cross-entropies, not the CE of one logit vector, so the method hands over
the per-example losses (``robust_losses``) beside the margins. The attack runs inside each example's
own ball of radius ``attack.eps_scale * eps_i`` (by default its eps_i ball).

What the hooks see: ``margin_lb`` are the IBP margins over the eps_i ball, those of the certified
part of the loss. ``WeightedRobustLoss`` weights each example's MTL-IBP loss by the eq. 6 margin of
its IBP worst-case logits (how close it is to being certified), and ``AutoEpsScheduler`` shrinks eps_i
for examples IBP does not certify, as it does for IBP: the radius is tuned to what is verified, the
quantity MTL-IBP is trained to raise.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..core.margins import robust_cross_entropy
from . import register
from .base import MethodOutput
from .mix import AdversarialMix


@register
class MTLIBP(AdversarialMix):
    name = "MTL-IBP"

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None,
                 clean: str = "grad") -> MethodOutput:
        a = self.alpha(progress)
        adv_logits, logits, ibp_lb = self.adversarial_and_ibp(classifier, x, y, eps, batch_slice, clean)
        adv_losses = F.cross_entropy(adv_logits, y.to(logits.device), reduction="none")
        return MethodOutput(logits, ibp_lb, (1.0 - a) * adv_losses + a * robust_cross_entropy(ibp_lb))
