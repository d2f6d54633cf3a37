"""lirpa_reweight: bound-based re-weighting and per-example auto-tuned eps for certified training.

Importing the package is cheap (no torch, no auto_LiRPA): it silences two known import-time messages of
third-party code (``_quiet``) and arranges for ``compat``'s patches to be applied the moment auto_LiRPA is
first imported, by us or by you (``_autopatch``). The public names below are imported on first use.
"""
from __future__ import annotations

import importlib
import importlib.util

from . import _autopatch, _quiet

_quiet.install()
_autopatch.install()

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AutoEpsScheduler": "autoeps",
    "WeightedRobustLoss": "reweight",
    "METHODS": "bounds",
    "BoundedClassifier": "bounds",
    "CertifiedBatch": "bounds",
    "bound_margin": "bounds",
    "worst_case_logits": "bounds",
    "ibp_init_": "init",
    "WarmupRegularizer": "regularizers",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a submodule: lirpa_reweight.compat, .data, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
