"""The part CC-IBP and MTL-IBP share: a coefficient ``alpha`` moved with the eps ramp (1: IBP, 0: adversarial
training), and an attack inside each example's own ball of ``attack.eps_scale * eps_i``."""
from __future__ import annotations

from typing import Optional

from .attack import AttackSettings, adversarial_point
from .base import check_coefficient, interpolate


class AdversarialMix:
    """Base of CC-IBP and MTL-IBP: ``alpha`` from ``alpha_start`` to ``alpha_end``, and their attack."""

    def __init__(self, alpha_start: float = 0.5, alpha_end: Optional[float] = None, attack: Optional[dict] = None):
        self.alpha_start = check_coefficient("alpha_start", alpha_start)
        self.alpha_end = self.alpha_start if alpha_end is None else check_coefficient("alpha_end", alpha_end)
        self.attack = AttackSettings.from_options(attack)

    def alpha(self, progress: float) -> float:
        return interpolate(self.alpha_start, self.alpha_end, progress)

    def adversarial_and_ibp(self, classifier, x, y, eps, batch_slice=None, clean: str = "grad"):
        """The logits at the attack point, then the clean logits and IBP margin bounds over the eps_i balls.

        The bound pass comes last, so that the bounded module still holds its intermediate bounds afterwards
        (a plain forward clears them): the warm-up regulariser reads them after the method.
        """
        x_adv = adversarial_point(classifier, x, y, eps, self.attack, batch_slice)
        adv_logits = classifier(x_adv)
        logits, ibp_lb = classifier.certify(x, y, eps, method="IBP", clean=clean)
        return adv_logits, logits, ibp_lb

    def coefficients(self, progress: float) -> dict:
        return {"alpha": self.alpha(progress)}
