"""Training methods: each turns (classifier, x, y, per-example eps, ramp progress) into clean logits and the
``(B, C-1)`` margins the loss trains on (MTL-IBP also its per-example losses).

``method = build_method("SABR", lambda_start=0.4, attack={"steps": 8})`` then
``logits, margin_lb, robust_losses = method(classifier, x, y, eps, progress)`` with ``progress`` in [0, 1]
(``eps_base / eps_train``; under data parallelism also ``batch_slice``, this rank's rows of the global batch, so
that an attack's random starts are the ones one process would draw), and
``loss = WeightedRobustLoss(...)(margin_lb, logits, y, kappa, robust_losses=...)``.
Methods know nothing of the tactics; each module's docstring says which margins the hooks see and why.
"""
from __future__ import annotations

import inspect

from .cc_ibp import CCIBP
from .common import AttackSettings, MethodOutput
from .crown_ibp import CROWNIBP
from .ibp import IBP
from .mtl_ibp import MTLIBP
from .sabr import SABR

METHODS = {"IBP": IBP, "CROWN-IBP": CROWNIBP, "SABR": SABR, "CC-IBP": CCIBP, "MTL-IBP": MTLIBP}


def build_method(name: str, **options):
    """The training method ``name`` (a key of :data:`METHODS`) with its options."""
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; allowed: {list(METHODS)}")
    method = METHODS[name]
    allowed = list(inspect.signature(method).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"training method {name} takes no option(s) {unknown}; allowed: {allowed}")
    return method(**options)


__all__ = ["METHODS", "AttackSettings", "MethodOutput", "build_method", "IBP", "CROWNIBP", "SABR", "CCIBP", "MTLIBP"]
