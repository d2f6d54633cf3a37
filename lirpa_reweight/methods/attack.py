"""The package's one L-inf PGD attack, used by evaluation and by the training methods that need one, and the
settings of a training method's attack.

Per-example radii are first-class: ``eps`` is a float or a ``(B,)`` tensor (pixel units), and the
step size is a multiple of each example's own radius, so an example trained at a smaller eps_i
(auto eps) is attacked inside its own ball.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from ..core.global_batch import GlobalBatchSlice
from ..errors import ArgumentError

Eps = Union[float, torch.Tensor]


class Attack(NamedTuple):
    """What :func:`pgd` found."""

    x_adv: torch.Tensor  # (B, ...) the point of highest cross-entropy seen, inside each example's ball
    fooled: torch.Tensor  # (B,) bool: some restart's final point is misclassified (all False for 0 steps)


def _per_pixel(eps: Eps, x: torch.Tensor) -> torch.Tensor:
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return eps.view((-1,) + (1,) * (x.dim() - 1)) if eps.dim() == 1 else eps


def random_start_noise(x: torch.Tensor, batch_slice: Optional[GlobalBatchSlice] = None) -> torch.Tensor:
    """Uniform noise in [-1, 1] shaped like ``x``, from the default generator. Under data parallelism every
    rank draws the whole global batch's noise and keeps its rows (``batch_slice``): the ranks' generators are
    seeded alike and stay in step, so together they draw what one process draws for that batch."""
    if batch_slice is None:
        return torch.empty_like(x).uniform_(-1.0, 1.0)
    noise = torch.empty((batch_slice.size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return noise.uniform_(-1.0, 1.0)[batch_slice.start:batch_slice.start + len(x)]


def pgd(classifier, x: torch.Tensor, y: torch.Tensor, eps: Eps, steps: int = 20, restarts: int = 1,
        step_size: Optional[float] = None, batch_slice: Optional[GlobalBatchSlice] = None) -> Attack:
    """L-inf PGD on the cross-entropy, in pixel space, inside each ball clamped to the data range.

    Args:
        classifier: maps pixel-space input to logits and has ``data_range`` (a ``BoundedClassifier``).
        eps: a float or ``(B,)`` radii.
        steps: gradient-sign steps per restart; 0 returns the clean ``x`` (no random start).
        restarts: independent random starts; the point of highest loss is kept per example.
        step_size: each step's move as a multiple of the example's eps; None gives ``2.5 / steps``.
        batch_slice: where ``x`` sits in the global batch under data parallelism (see
            :func:`random_start_noise`); None for one process.

    Runs in whatever train/eval mode the classifier is in, computes no parameter gradients and
    does not synchronise with the device (a radius of 0 simply leaves the example at ``x``).
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    low, high = classifier.data_range
    radius = _per_pixel(eps, x)
    fooled = torch.zeros_like(y, dtype=torch.bool)
    if steps == 0:
        return Attack(x.detach(), fooled)
    step = radius * (2.5 / steps if step_size is None else float(step_size))
    x_low, x_high = (x - radius).clamp(low, high), (x + radius).clamp(low, high)
    best_x, best_loss = x.detach(), torch.full_like(y, -float("inf"), dtype=x.dtype)
    for _ in range(restarts):
        start = x + random_start_noise(x, batch_slice) * radius
        x_adv = torch.max(torch.min(start, x_high), x_low)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(classifier(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.max(torch.min(x_adv.detach() + step * grad.sign(), x_high), x_low)
        with torch.no_grad():
            logits = classifier(x_adv)
            losses = F.cross_entropy(logits, y, reduction="none")
            fooled |= logits.argmax(1) != y
            better = losses > best_loss
            best_loss = torch.where(better, losses, best_loss)
            best_x = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), x_adv, best_x)
    return Attack(best_x.detach(), fooled)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The summed margin ``max_{j != y} z_j - z_y``: positive exactly where an example is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -float("inf")).amax(1)
    return (others - true).sum()


def seeded_noise(shape, generators, like: torch.Tensor) -> torch.Tensor:
    """Uniform noise in [-1, 1], one row per example from its own generator (so a row does not depend on the
    batch it is drawn in)."""
    rows = [torch.rand(tuple(shape), generator=g, dtype=torch.float64) for g in generators]
    return (torch.stack(rows).to(device=like.device, dtype=like.dtype) * 2.0 - 1.0)


def evaluation_pgd(classifier, x: torch.Tensor, y: torch.Tensor, eps: float, generators, steps: int = 20,
                   restarts: int = 1, step_size: Optional[float] = None, loss: str = "margin",
                   centre_start: bool = True) -> Attack:
    """The evaluation's PGD: like :func:`pgd` but on the margin loss (``loss="margin"``) or the cross-entropy,
    the first restart at the centre of the clamped box (``centre_start``), the others at random points drawn
    from each example's own ``generators``, and each example left alone once some step has misclassified it.
    ``x_adv`` is the first misclassified point found (``x`` where none was)."""
    loss_fn = margin_loss if loss == "margin" else (lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum"))
    x_low, x_high = classifier.input_box(x, eps)
    step = eps * (2.5 / steps if step_size is None else float(step_size))
    found, fooled = x.detach().clone(), torch.zeros_like(y, dtype=torch.bool)
    for restart in range(restarts):
        open_ = (~fooled).nonzero().squeeze(1)
        if len(open_) == 0:
            break
        lo, hi, labels = x_low[open_], x_high[open_], y[open_]
        if restart == 0 and centre_start:
            x_adv = (lo + hi) / 2
        else:
            noise = seeded_noise(x.shape[1:], [generators[int(i)] for i in open_], x)
            x_adv = torch.max(torch.min(x[open_] + noise * eps, hi), lo)
        hit = torch.zeros(len(open_), dtype=torch.bool, device=x.device)
        for done in range(steps + 1):
            # Each step's forward pass also says which points are misclassified already: the first is kept.
            x_adv = x_adv.detach().requires_grad_(done < steps)
            with torch.set_grad_enabled(done < steps):
                logits = classifier(x_adv)
                wrong = (logits.argmax(1) != labels) & ~hit
                found[open_[wrong]] = x_adv[wrong].detach()
                hit |= wrong
                if done == steps or bool(hit.all()):
                    break
                # Examples already hit still take the step; their point is recorded, and stepping them keeps the
                # batch whole.
                (grad,) = torch.autograd.grad(loss_fn(logits, labels), x_adv)
            x_adv = torch.max(torch.min(x_adv.detach() + step * grad.sign(), hi), lo)
        fooled[open_] = hit
    return Attack(found, fooled)


def pgd_attack(classifier, x: torch.Tensor, y: torch.Tensor, eps: Eps, steps: int = 20, restarts: int = 1,
               step_size: Optional[float] = None) -> torch.Tensor:
    """Evaluation's view of :func:`pgd`: a boolean ``(B,)``, True where the clean point or some restart is
    misclassified."""
    with torch.no_grad():
        fooled = classifier(x).argmax(1) != y
    if isinstance(eps, (int, float)) and eps == 0:
        return fooled
    return fooled | pgd(classifier, x, y, eps, steps=steps, restarts=restarts, step_size=step_size).fooled


@dataclass(frozen=True)
class AttackSettings:
    """A training method's attack (:func:`pgd`): steps, step size, restarts, and the attack radius
    ``eps_scale * eps_i`` (CC-IBP / MTL-IBP attack a ball larger than eps at 2/255); the step size is a
    multiple of that attack radius."""

    steps: int = 1
    step_size: Optional[float] = None
    restarts: int = 1
    eps_scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ArgumentError("attack.steps", self.steps, "an integer >= 0")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ArgumentError("attack.restarts", self.restarts, "an integer >= 1")
        if self.step_size is not None and not (_is_number(self.step_size) and self.step_size > 0):
            raise ArgumentError("attack.step_size", self.step_size, "null (2.5 / steps) or a number > 0 (a multiple "
                                                                    "of the attack radius)")
        if not (_is_number(self.eps_scale) and self.eps_scale > 0):
            raise ArgumentError("attack.eps_scale", self.eps_scale, "a number > 0 (the attack radius over eps_i)")

    @classmethod
    def from_options(cls, options: Optional[dict]) -> "AttackSettings":
        options = dict(options or {})
        unknown = sorted(set(options) - {"steps", "step_size", "restarts", "eps_scale"})
        if unknown:
            raise ArgumentError(f"attack.{unknown[0]}", options[unknown[0]],
                                "no such attack option; allowed: steps, step_size, restarts, eps_scale")
        return cls(**options)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def adversarial_point(classifier, x: torch.Tensor, y: torch.Tensor, eps, attack: AttackSettings,
                      batch_slice: Optional[GlobalBatchSlice] = None) -> torch.Tensor:
    """A PGD point inside each example's own ball of radius ``attack.eps_scale * eps_i`` (clamped to the data
    range); the clean ``x`` for a 0-step attack.

    The attack runs in eval mode, so that it neither uses nor updates train-mode BatchNorm statistics
    (as CTRAIN and SABR's code do); the caller's mode is restored. ``batch_slice``: this rank's rows of the
    global batch under data parallelism (the random starts then match one process's), None for one process.
    """
    was_training = classifier.training
    classifier.eval()
    try:
        return pgd(classifier, x, y, eps * attack.eps_scale, steps=attack.steps, restarts=attack.restarts,
                   step_size=attack.step_size, batch_slice=batch_slice).x_adv
    finally:
        classifier.train(was_training)
