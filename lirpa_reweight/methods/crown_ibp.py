"""CROWN-IBP (Zhang et al. 2020): ``beta * crown_ibp + (1 - beta) * ibp`` margins, beta ramped with eps.

The hooks weight and read the mixed margins: the bound the loss trains on, a certificate at every beta.
"""
from __future__ import annotations

from .common import MethodOutput, check_coefficient, ramp


class CROWNIBP:
    name = "CROWN-IBP"

    def __init__(self, beta_start: float = 1.0, beta_end: float = 0.0):
        self.beta_start = check_coefficient("beta_start", beta_start)
        self.beta_end = check_coefficient("beta_end", beta_end)

    def __call__(self, classifier, x, y, eps, progress: float = 1.0, batch_slice=None) -> MethodOutput:
        beta = ramp(self.beta_start, self.beta_end, progress)
        logits, lb = classifier.certify(x, y, eps, method="CROWN-IBP", beta=beta)
        return MethodOutput(logits, lb)

    def coefficients(self, progress: float) -> dict:
        return {"beta": ramp(self.beta_start, self.beta_end, progress)}
