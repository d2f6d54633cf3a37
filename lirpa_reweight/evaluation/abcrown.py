"""alpha-beta-CROWN as the cascade's last stage, through its Python API (``ABCrownSolver``, ``VerificationSpec``,
``ConfigBuilder``); no code of it lives here.

It is in no package registry and needs upstream auto_LiRPA 0.7.x (torch < 2.9): users install both from GitHub
by their own instructions (docs/verification.md). Each example is one property: the L-inf box of radius eps
around x clamped to the data range, in pixel space, and ``z_y > z_j`` for every ``j != y``. Our models receive
normalised input (the normalisation lives outside the bounded graph, in :class:`BoundedClassifier`), so
alpha-beta-CROWN gets the network *with* its normalisation in front: a pixel-space network for a pixel box.
"""
from __future__ import annotations

import contextlib
import io
import time
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..core.bounds import BoundedClassifier
from ..errors import ArgumentError
from .plan import AbcrownOptions, require_abcrown

#: alpha-beta-CROWN's statuses that prove the property, and those that claim a counterexample.
SAFE = ("safe", "safe-incomplete", "verified", "safe-mip", "safe-bab")
UNSAFE_PREFIX = "unsafe"


class Verdict(NamedTuple):
    """One example's answer: ``outcome`` (verified / falsified / unknown), alpha-beta-CROWN's own ``status``, its
    counterexample candidates (K, C, H, W) in pixel space where it claimed one, and the seconds it took."""

    outcome: str
    status: str
    counterexample: Optional[torch.Tensor]
    seconds: float


class PixelNetwork(nn.Module):
    """The classifier's network with its normalisation in front: pixel-space input to logits."""

    def __init__(self, classifier: BoundedClassifier):
        super().__init__()
        self.model = classifier.model
        mean, std = classifier.mean, classifier.std
        self.register_buffer("mean", None if mean is None else mean.detach().clone().flatten())
        self.register_buffer("std", None if std is None else std.detach().clone().flatten())
        self.in_shape = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_shape is not None and x.dim() == 2:  # alpha-beta-CROWN may hand over flat inputs
            x = x.view(x.shape[0], *self.in_shape)
        if self.mean is not None:
            x = (x - _channel_view(self.mean, x)) / _channel_view(self.std, x)
        return self.model(x)


def _channel_view(stats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (1, C, 1, 1): auto_LiRPA 0.7's patches mode needs 4-D constants (it warns that they carry a batch dimension).
    return stats.reshape(1, -1, *([1] * (x.dim() - 2)))


def solver_config(options: AbcrownOptions, device: str):
    """alpha-beta-CROWN's config: its defaults, our device and per-example timeout, quiet, then the user's
    ``options.config`` merged on top."""
    abcrown = require_abcrown()
    builder = abcrown.ConfigBuilder.from_defaults()
    builder.update({"general": {"device": device, "verbose": False},
                    "bab": {"timeout": float(options.timeout)}})
    if options.config:
        builder.update(dict(options.config))
    return builder()


def verify_example(network: PixelNetwork, x: torch.Tensor, y: int, eps: float, data_range, config) -> Verdict:
    """Run alpha-beta-CROWN on one example ``x`` (C, H, W) with label ``y``; its chatter is discarded."""
    abcrown = require_abcrown()
    low, high = data_range
    lower, upper = (x - eps).clamp(low, high)[None].cpu(), (x + eps).clamp(low, high)[None].cpu()
    network.in_shape = tuple(x.shape)
    with torch.no_grad():
        num_classes = int(network(x[None].to(_device_of(network))).shape[1])
    spec = abcrown.VerificationSpec.build_spec(lower=lower, upper=upper, clauses=violations(y, num_classes))
    started = time.time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = abcrown.ABCrownSolver(spec, network, config=config).solve(return_reference=False)
    seconds = time.time() - started
    status = str(result.status)
    if status in SAFE:
        return Verdict("verified", status, None, seconds)
    if status.startswith(UNSAFE_PREFIX):
        return Verdict("falsified", status, _counterexample(result, x), seconds)
    return Verdict("unknown", status, None, seconds)


def violations(y: int, num_classes: int) -> list:
    """The property's negation in alpha-beta-CROWN's (C, rhs) form, C @ z <= rhs: some ``z_j >= z_y`` (one OR
    clause per ``j != y``, as a VNN-LIB robustness property writes it)."""
    clauses = []
    for j in range(num_classes):
        if j != y:
            row = torch.zeros(1, num_classes)
            row[0, y], row[0, j] = 1.0, -1.0
            clauses.append((row, torch.zeros(1)))
    return clauses


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _counterexample(result, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The attack points alpha-beta-CROWN reports with an unsafe status, (K, *x.shape): one per clause it attacked,
    of which at least one should violate the property (None if it gave none); the caller re-checks them."""
    found = (result.stats or {}).get("attack_examples")
    if found is None or not torch.is_tensor(found) or found.numel() < x.numel() or found.numel() % x.numel():
        return None
    return found.reshape(-1, *x.shape).to(x.device, x.dtype)
