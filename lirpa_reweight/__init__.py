"""lirpa_reweight: bound-based re-weighting and per-example auto-tuned eps for certified training.

Importing the package first patches auto_LiRPA for current PyTorch (see ``compat``).
"""
from . import compat

compat.apply()

from .autoeps import AutoEpsScheduler  # noqa: E402
from .bounds import METHODS, BoundedClassifier, CertifiedBatch, bound_margin, worst_case_logits  # noqa: E402
from .init import ibp_init_  # noqa: E402
from .regularizers import WarmupRegularizer  # noqa: E402
from .reweight import WeightedRobustLoss  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AutoEpsScheduler",
    "WeightedRobustLoss",
    "METHODS",
    "BoundedClassifier",
    "CertifiedBatch",
    "bound_margin",
    "worst_case_logits",
    "ibp_init_",
    "WarmupRegularizer",
]
