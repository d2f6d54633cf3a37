"""Training methods, by name: each turns (classifier, x, y, per-example eps, ramp progress) into clean logits and
the ``(B, C-1)`` margins the loss trains on (MTL-IBP also its per-example losses).

``method = build_method("SABR", lambda_start=0.4, attack={"steps": 8})`` then
``logits, margin_lb, robust_losses = method(classifier, x, y, eps, progress)`` with ``progress`` in [0, 1]
(``eps_base / eps_train``; under data parallelism also ``batch_slice``, this rank's rows of the global batch, so
that an attack's random starts are the ones one process would draw; and ``clean``, what the clean logits are for,
as ``BoundedClassifier.certify`` takes it: at kappa 0 only a metric or nothing, so that their pass may run without
autograd or not at all and ``logits`` may be None), and
``loss = WeightedRobustLoss(...)(margin_lb, logits, y, kappa, robust_losses=...)``. With ``loss_fusion=True``
(IBP, CROWN-IBP) ``margin_lb`` is None and ``robust_losses`` are the fused CE bounds ``u``:
``WeightedRobustLoss(...).compute_from_losses(u, fused_margin(u), logits, y, kappa)`` (docs/loss-fusion.md).
Methods know nothing of the tactics; each module's docstring says which margins the hooks see and why.
A new method is one module here with a class decorated ``@register`` (docs/design.md).
"""
from __future__ import annotations

import inspect

from ..errors import ArgumentError

#: name -> method class, filled by :func:`register` as the method modules below are imported.
TRAINING_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` buildable as ``build_method(cls.name, ...)``."""
    if cls.name in TRAINING_METHODS:
        raise ValueError(f"training method {cls.name!r} is registered twice")
    TRAINING_METHODS[cls.name] = cls
    return cls


def build_method(name: str, **options):
    """The training method ``name`` (a key of :data:`TRAINING_METHODS`) with its options."""
    if name not in TRAINING_METHODS:
        raise ArgumentError("method", name, f"one of {list(TRAINING_METHODS)}")
    method = TRAINING_METHODS[name]
    allowed = list(inspect.signature(method).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ArgumentError(unknown[0], options[unknown[0]], f"not an option of training method {name}; "
                                                             f"its options: {allowed or 'none'}")
    return method(**options)


from . import ibp, crown_ibp, sabr, cc_ibp, mtl_ibp  # noqa: E402,F401  (each registers its method)
