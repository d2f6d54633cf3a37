"""Warm-up regularisers on the intermediate IBP bounds (Shi et al. 2021, sec. 3.3; their ``regularization.py``,
``compute_reg``), read from the bounds auto_LiRPA already holds after ``compute_bounds``: no second bound pass.

For the input interval ``[l_i, u_i]`` of every ReLU, with centre ``c = (u + l) / 2`` and radius ``r = (u - l) / 2``,
and the radius ``r_0`` of the network input:

- tightness: ``relu(tol - mean(r_0) / mean(r)) / tol``, penalising a layer whose intervals grew more than
  ``1/tol`` times the input's;
- ReLU balance: with the active (``l > 0``) and inactive (``u < 0``) units,
  ``m = mean(c * active) / -mean(c * inactive)`` and ``v = sum((c - mean c)^2 * active) / sum(... * inactive)``,
  each folded to ``min(x, 1/x)``: ``(relu(tol - m) + relu(tol - v)) / tol``, penalising a layer whose units are
  mostly on one side. A ReLU where a ratio is 0/0 (no active and no inactive unit) adds nothing to it, as in
  Shi et al.'s code (which skips a NaN term).

Each term is averaged over the ReLUs; their sum is weighted by ``lambda * (1 - eps / eps_max)``: strongest at
the start of the eps ramp, zero once eps reaches eps_max. At ``eps = 0`` there is no interval and the weight is
taken as zero, so the loss changes only during the ramp. Plain torch + auto_LiRPA; no Hydra.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ArgumentError

TERMS = ("tightness", "relu")
_TINY = 1e-12  # Shi et al.'s clamp of the denominators


def _bounded_module(bounded):
    # A BoundedClassifier holds its BoundedModule as .bounded; anything else is taken as the BoundedModule.
    return getattr(bounded, "bounded", bounded)


def relu_input_bounds(bounded) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(lower, upper)`` of every ReLU's input, in graph order, from the last ``compute_bounds``.

    ``bounded`` is an auto_LiRPA ``BoundedModule`` (0.3 or later; ``relus`` lists its ReLU nodes) or a
    :class:`~lirpa_reweight.BoundedClassifier`.
    """
    module = _bounded_module(bounded)
    bounds = []
    for relu in module.relus:
        node = relu.inputs[0]
        lower, upper = getattr(node, "lower", None), getattr(node, "upper", None)
        if lower is None or upper is None:
            raise RuntimeError(f"ReLU {relu.name} has no input bounds: call compute_bounds (IBP or CROWN-IBP) on "
                               "this BoundedModule before the regulariser")
        bounds.append((lower, upper))
    return bounds


def input_bounds(bounded) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` of the perturbed input node, from the last ``compute_bounds``."""
    module = _bounded_module(bounded)
    node = module._modules[module.input_name[0]]
    if getattr(node, "lower", None) is None:
        raise RuntimeError("the input node has no bounds: call compute_bounds on this BoundedModule first")
    return node.lower, node.upper


def tightness_term(input_radius: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, tol: float) -> torch.Tensor:
    """Shi et al.'s L_tightness for one ReLU: ``relu(tol - mean r_0 / mean r) / tol``."""
    radius = (upper.mean() - lower.mean()) / 2  # mean((u - l) / 2) without a full-size temporary
    return F.relu(tol - input_radius / radius.clamp(min=_TINY)) / tol


def relu_balance_term(lower: torch.Tensor, upper: torch.Tensor, tol: float) -> torch.Tensor:
    """Shi et al.'s L_relu for one ReLU: balance of active and inactive units in mean and in variance."""
    # Written with few full-size temporaries (each costs more than the arithmetic on a CPU):
    # sum(c * mask) = sum((c - mean c) * mask) + mean c * count(mask), and the squared deviations by dot products.
    count = lower.numel()
    mean_center = (upper.mean() + lower.mean()) / 2
    deviation = (upper + lower) / 2 - mean_center
    # Float masks, made once: a bool operand would be converted again in the backward pass.
    active, inactive = (lower > 0).to(deviation.dtype), (upper < 0).to(deviation.dtype)
    dev_act, dev_inact = (deviation * active).flatten(), (deviation * inactive).flatten()
    mean_act = (dev_act.sum() + mean_center * active.sum()) / count
    mean_inact = -(dev_inact.sum() + mean_center * inactive.sum()) / count
    var_act, var_inact = torch.dot(dev_act, dev_act), torch.dot(dev_inact, dev_inact)

    def folded(num, den):
        ratio = num / den.clamp(min=_TINY)
        return torch.minimum(ratio, 1 / ratio.clamp(min=_TINY))

    term = (F.relu(tol - folded(mean_act, mean_inact)) + F.relu(tol - folded(var_act, var_inact))) / tol
    # 0/0 is NaN in Shi et al.'s code, whose term is then dropped; a mask keeps NaN out of the gradient too.
    defined = ((mean_act != 0) | (mean_inact != 0)) & ((var_act != 0) | (var_inact != 0))
    return term * defined.to(term.dtype)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class WarmupRegularizer:
    """``reg(bounded, eps, eps_max)``: Shi et al.'s warm-up loss from the bounds of the last ``compute_bounds``.

    Args:
        tol: the tolerance ``tau`` of both terms (Shi et al.'s ``--tol``, default 0.5).
        lam: the weight ``lambda`` at eps = 0+ (their ``--reg-lambda``, default 0.5).
        terms: which terms to add, from ``("tightness", "relu")`` (their default ``--reg-obj``).

    Call it after ``compute_bounds`` (IBP, or CROWN-IBP whose intermediate bounds are IBP's) and add the
    result to the loss; ``eps`` is the schedule's current base radius, ``eps_max`` its final one.
    :meth:`unweighted` gives the terms before the ramp weight.
    """

    def __init__(self, tol: float = 0.5, lam: float = 0.5, terms: Sequence[str] = TERMS):
        if not _is_number(tol) or not tol > 0:
            raise ArgumentError("tol", tol, "a number > 0")
        if not _is_number(lam) or not lam >= 0:
            raise ArgumentError("lam", lam, "a number >= 0 (lambda)")
        if not terms or set(terms) - set(TERMS):
            raise ArgumentError("terms", list(terms), f"a non-empty subset of {list(TERMS)}")
        self.tol, self.lam, self.terms = float(tol), float(lam), tuple(terms)

    def __repr__(self) -> str:
        return f"WarmupRegularizer(tol={self.tol}, lam={self.lam}, terms={self.terms})"

    def weight(self, eps: float, eps_max: float) -> float:
        """``lambda * (1 - eps / eps_max)`` inside the ramp (0 < eps < eps_max), else 0."""
        eps, eps_max = float(eps), float(eps_max)
        if eps_max <= 0 or not 0 < eps < eps_max:
            return 0.0
        return self.lam * (1.0 - eps / eps_max)

    def unweighted(self, bounded) -> dict[str, torch.Tensor]:
        """Each term, averaged over the ReLUs, before the ramp weight."""
        lower_0, upper_0 = input_bounds(bounded)
        input_radius = ((upper_0 - lower_0) / 2).mean()
        relus = relu_input_bounds(bounded)
        if not relus:
            raise ValueError("the bounded model has no ReLU: the warm-up regularisers need ReLU layers")
        values = {}
        if "tightness" in self.terms:
            values["tightness"] = torch.stack([tightness_term(input_radius, l, u, self.tol) for l, u in relus]).mean()
        if "relu" in self.terms:
            values["relu"] = torch.stack([relu_balance_term(l, u, self.tol) for l, u in relus]).mean()
        return values

    def __call__(self, bounded, eps: float, eps_max: float) -> torch.Tensor:
        weight = self.weight(eps, eps_max)
        if weight == 0.0:
            # Outside the ramp: no term is computed (nothing costs, nothing touches the graph).
            lower, _ = input_bounds(bounded)
            return lower.new_zeros(())
        return weight * sum(self.unweighted(bounded).values())
