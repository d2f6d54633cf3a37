"""CC-IBP (De Palma et al., ICLR 2024): one CE on the convex combination of adversarial and IBP margins.

``margin_lb = (1 - a) * (z_y - z_j)(x_adv) + a * ibp_lb``, the worst-case logit differences the loss
trains on (``a = 1``: IBP; ``a = 0``: adversarial training). The attack runs inside each example's own
ball of radius ``attack.eps_scale * eps_i`` (by default its eps_i ball).

What the hooks see: those mixed margins, as they are the logits of CC-IBP's cross-entropy:
``WeightedRobustLoss`` computes the robust CE of ``[0, -margin_lb]`` (exactly CC-IBP's loss) and weights
examples by the eq. 6 margin of the same logits; ``AutoEpsScheduler`` shrinks eps_i where the mixed
margin is negative. They are a certificate only at ``a = 1``.
"""
from __future__ import annotations

from ..core.margins import logit_margins
from . import register
from .base import MethodOutput
from .mix import AdversarialMix


@register
class CCIBP(AdversarialMix):
    name = "CC-IBP"

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None,
                 clean: str = "grad") -> MethodOutput:
        a = self.alpha(progress)
        adv_logits, logits, ibp_lb = self.adversarial_and_ibp(classifier, x, y, eps, batch_slice, clean)
        adv_margins = logit_margins(adv_logits, y.to(logits.device))
        return MethodOutput(logits, (1.0 - a) * adv_margins + a * ibp_lb)
