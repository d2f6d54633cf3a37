"""lirpa_reweight: bound-based re-weighting and per-example auto-tuned eps for certified training.

Importing the package is cheap (no torch, no auto_LiRPA): it silences known harmless messages of third-party
code and arranges for the compatibility patches to be applied the moment auto_LiRPA is first imported, by us or
by you (:mod:`lirpa_reweight._compat`). The public names below are imported on first use; the layout of the
package and its layer rules are in docs/design.md.
"""
from __future__ import annotations

import importlib

from . import _compat

_compat.install()

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "WeightedRobustLoss": "core.reweight",
    "AutoEpsScheduler": "core.autoeps",
    "BoundedClassifier": "core.bounds",
    "CertifiedBatch": "core.bounds",
    "FusedBatch": "core.bounds",
    "fused_losses": "core.bounds",
    "BOUND_METHODS": "core.bound_methods",
    "bound_margin": "core.margins",
    "worst_case_logits": "core.margins",
    "robust_cross_entropy": "core.margins",
    "fused_margin": "core.margins",
    "build_method": "methods",
    "TRAINING_METHODS": "methods",
    "ibp_init_": "fast.ibp_init",
    "WarmupRegularizer": "fast.regularizers",
    "build_model": "models",
    "IndexedDataset": "data.datasets",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
