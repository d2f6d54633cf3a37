"""The cascade's stages, one small function each; every one receives only the examples still open.

A bound stage returns which examples it verified; an attack stage returns which it fooled and the points that
fooled them, which :func:`recheck` confirms by a plain forward pass inside the clamped box before an example is
called falsified.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..core.bounds import BoundedClassifier
from ..core.margins import logit_margins
from ..methods.attack import evaluation_pgd
from .plan import FULL_CROWN, AttackOptions

#: Slack, in pixel units, for a counterexample sitting on the box's face (float32 arithmetic of x +- eps).
BOX_TOLERANCE = 1e-6


class Found(NamedTuple):
    """What an attack stage found: ``fooled`` (B,) bool and ``x_adv`` the points (meaningful where fooled)."""

    fooled: torch.Tensor
    x_adv: torch.Tensor


def clean_wrong(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the clean prediction is wrong (the example is falsified at ``x`` itself)."""
    with torch.no_grad():
        return classifier(x).argmax(1) != y


def bound_verified(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float,
                   method: str, crown_chunk: int = 16) -> torch.Tensor:
    """(B,) bool: every margin lower bound of ``method`` is positive (full CROWN in chunks of ``crown_chunk``)."""
    chunk = crown_chunk if method in FULL_CROWN else max(len(y), 1)
    with torch.no_grad():
        return torch.cat([(classifier.margin_lower_bounds(x[i:i + chunk], y[i:i + chunk], eps, method) > 0).all(1)
                          for i in range(0, len(y), chunk)])


def example_generators(seed: int, indices: Sequence[int]) -> list:
    """One generator per example, seeded by ``seed`` and its dataset index."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in indices]


def pgd_found(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, indices: Sequence[int],
              options: AttackOptions) -> Found:
    """Our PGD (:func:`~lirpa_reweight.methods.attack.evaluation_pgd`) with the evaluation's options."""
    if options.steps == 0 or eps == 0 or len(y) == 0:
        return Found(torch.zeros_like(y, dtype=torch.bool), x)
    with torch.enable_grad():
        attack = evaluation_pgd(classifier, x, y, eps, example_generators(options.seed, indices),
                                steps=options.steps, restarts=options.restarts, step_size=options.step_size,
                                loss=options.loss, centre_start=options.centre_start)
    return Found(attack.fooled, attack.x_adv)


def autoattack_found(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float,
                     options: AttackOptions) -> Found:
    """AutoAttack's APGD-CE, then APGD-T (for 4 classes or more) on what it left (torchattacks), on pixel space
    rescaled to [0, 1]
    (what torchattacks assumes). The global random state is put back afterwards: torchattacks seeds it."""
    import torchattacks

    if eps == 0 or len(y) == 0:
        return Found(torch.zeros_like(y, dtype=torch.bool), x)
    low, high = classifier.data_range
    unit = _UnitRange(classifier)
    u, radius = (x - low) / (high - low), eps / (high - low)
    fooled, x_adv = torch.zeros_like(y, dtype=torch.bool), x.clone()
    num_classes = unit.num_classes(x[:1])
    attacks = [torchattacks.APGD(unit, norm="Linf", eps=radius, steps=options.autoattack_steps, loss="ce",
                                 seed=options.seed)]
    if num_classes >= 4:  # APGD-T's targeted DLR loss needs the 4 largest logits
        attacks.append(torchattacks.APGDT(unit, norm="Linf", eps=radius, steps=options.autoattack_steps,
                                          n_classes=num_classes, seed=options.seed))
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        for attack in attacks:
            open_ = (~fooled).nonzero().squeeze(1)
            if len(open_) == 0:
                break
            adv = low + (high - low) * attack(u[open_], y[open_])
            wrong = clean_wrong(classifier, adv, y[open_])
            x_adv[open_[wrong]] = adv[wrong]
            fooled[open_[wrong]] = True
    return Found(fooled, x_adv)


class _UnitRange(torch.nn.Module):
    """The classifier seen on inputs in [0, 1] (torchattacks clamps to that range)."""

    def __init__(self, classifier: BoundedClassifier):
        super().__init__()
        self.classifier = classifier
        self.low, self.high = classifier.data_range

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.low + (self.high - self.low) * u)

    def num_classes(self, x: torch.Tensor) -> int:
        with torch.no_grad():
            return int(self.classifier(x).shape[1])


def recheck(classifier: BoundedClassifier, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Confirm counterexamples by a plain forward pass: (B,) bool, True where ``x_adv`` lies in the clamped box
    (up to float slack, then projected into it exactly) and the projected point is misclassified; and (B,) the
    margin ``z_y - max_{j != y} z_j`` at the projected point (negative for a counterexample)."""
    low, high = classifier.input_box(x, eps)
    projected = torch.max(torch.min(x_adv, high), low)
    inside = ((x_adv - projected).abs() <= BOX_TOLERANCE).flatten(1).all(1)
    with torch.no_grad():
        logits = classifier(projected)
    return inside & (logits.argmax(1) != y), logit_margins(logits, y).min(1).values
