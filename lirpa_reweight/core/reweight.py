"""The paper's bound-based re-weighted loss (section 3.1, eq. 6-8), as a drop-in loss module.

It takes the ``(B, C-1)`` margin lower bounds that auto_LiRPA users already compute
with a C matrix, and returns

    kappa * mean_i CE(clean_logits_i, y_i) + (1 - kappa) * sum_i w_i CE_robust_i / sum_i w_i

where ``CE_robust_i`` is the cross-entropy of the worst-case logits (eq. 2: 0 for the
true class, ``-lb`` for the others) and ``w_i = exp(-gamma |margin_i|) + alpha`` (eq. 7),
with ``margin_i`` the eq. 6 margin of those logits. The weights carry no gradient.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError
from .deferred import DeferredChecks
from .margins import bound_margin, robust_cross_entropy


def _check_hyper_parameter(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0.0):
        raise ArgumentError(name, value, "a finite number >= 0")
    return number


class WeightedLoss(NamedTuple):
    """What :meth:`WeightedRobustLoss.compute` returns for a batch (all but ``loss`` detached)."""

    loss: torch.Tensor  # the scalar to backpropagate
    margins: torch.Tensor  # (B,) eq. 6 margins: what AutoEpsScheduler.update takes
    weights: torch.Tensor  # (B,) eq. 7 weights
    robust_losses: torch.Tensor  # (B,) the unweighted robust losses (comparable across gamma)
    examples: torch.Tensor  # () how many examples the loss averages over: B, or the global batch under a group


class WeightedRobustLoss(nn.Module):
    """Eq. 8 of the paper: clean CE mixed with a bound-based re-weighted robust CE.

    Args:
        gamma: how sharply the weight peaks at the decision boundary (margin 0); 0 gives
            the plain unweighted robust loss.
        alpha: weight floor, so that examples with ``|margin|`` near 1 are not ignored.

        process_group: under data parallelism (DDP or a loop of one's own that averages gradients over
            ranks), the ``torch.distributed`` group of the ranks that share one global batch (e.g.
            ``torch.distributed.group.WORLD``); None for one process. With a group, the weights are
            normalised by their sum over the global batch (one all-reduce of detached sums per call)
            and each rank's loss is scaled by the group's size, so that after the usual gradient
            averaging every rank holds the gradient one process would compute on the whole global batch;
            the mean of the ranks' losses is that process's loss.
        sync_checks: True raises on NaN/inf bounds at once (a host synchronisation per call); False
            counts them on the device and raises from :meth:`check`, so that the step never waits.

    Calling it returns the scalar loss; :meth:`compute` returns the loss with the batch's margins, weights and
    robust losses (a :class:`WeightedLoss`): ``compute(...).margins`` is what
    :meth:`~lirpa_reweight.core.autoeps.AutoEpsScheduler.update` takes. ``gamma`` and ``alpha`` travel in
    ``state_dict()``.
    """

    def __init__(self, gamma: float = 5.0, alpha: float = 0.1, process_group=None, sync_checks: bool = True):
        super().__init__()
        self.gamma, self.alpha = self.check_hyper_parameters(gamma, alpha)
        self.process_group = process_group
        self.sync_checks = bool(sync_checks)
        self.deferred = DeferredChecks({"lb": "lb had NaN or inf"})

    @staticmethod
    def check_hyper_parameters(gamma, alpha) -> tuple[float, float]:
        """``(gamma, alpha)`` as floats, or :class:`~lirpa_reweight.errors.ArgumentError`: finite numbers >= 0."""
        return _check_hyper_parameter("gamma", gamma), _check_hyper_parameter("alpha", alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"

    def get_extra_state(self) -> dict:
        return {"gamma": self.gamma, "alpha": self.alpha}

    def set_extra_state(self, state: dict) -> None:
        self.gamma, self.alpha = self.check_hyper_parameters(state["gamma"], state["alpha"])

    def weights(self, margin: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``exp(-gamma |margin|) + alpha``."""
        return torch.exp(-self.gamma * margin.abs()) + self.alpha

    def forward(self, lb: torch.Tensor, clean_logits: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, kappa: float = 0.0,
                robust_losses: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The scalar loss (see :meth:`compute`)."""
        return self.compute(lb, clean_logits, y, kappa, robust_losses).loss

    def compute(self, lb: torch.Tensor, clean_logits: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, kappa: float = 0.0,
                robust_losses: Optional[torch.Tensor] = None) -> WeightedLoss:
        """The loss for margin lower bounds ``lb`` ``(B, C-1)``, with its margins, weights and robust losses.

        ``clean_logits`` ``(B, C)`` and labels ``y`` ``(B,)`` are needed only when ``kappa > 0``.
        ``robust_losses`` ``(B,)``, when given, are the per-example robust losses to weight in place of
        the CE of ``[0, -lb]`` (a method whose loss is not one CE, e.g. MTL-IBP); the weights still come
        from the eq. 6 margins of ``lb``.
        """
        kappa = self._check_inputs(lb, clean_logits, y, kappa)
        if robust_losses is not None and tuple(robust_losses.shape) != (lb.shape[0],):
            raise ValueError(f"robust_losses must be ({lb.shape[0]},) to match lb {tuple(lb.shape)}, "
                             f"got {tuple(robust_losses.shape)}")
        with torch.no_grad():
            margin = bound_margin(lb.detach())
        return self._weighted(margin, lambda: robust_cross_entropy(lb) if robust_losses is None else robust_losses,
                              clean_logits, y, kappa)

    def compute_from_losses(self, robust_losses: torch.Tensor, margins: torch.Tensor,
                            clean_logits: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                            kappa: float = 0.0) -> WeightedLoss:
        """Eq. 7-8 on per-example robust losses ``(B,)`` with the margins ``(B,)`` that weight them.

        For loss fusion, where only an upper bound ``u_i`` of each robust CE is bounded:
        ``compute_from_losses(u, fused_margin(u), ...)`` (:func:`~lirpa_reweight.core.margins.fused_margin`).
        The weights and the mean are those of :meth:`compute`; ``.margins`` is what ``AutoEpsScheduler.update``
        takes.
        """
        if not isinstance(robust_losses, torch.Tensor) or robust_losses.dim() != 1 or robust_losses.shape[0] == 0:
            shape = tuple(robust_losses.shape) if isinstance(robust_losses, torch.Tensor) else type(robust_losses).__name__
            raise ValueError(f"robust_losses must be a non-empty (B,) tensor, got {shape}")
        if not isinstance(margins, torch.Tensor) or tuple(margins.shape) != tuple(robust_losses.shape):
            shape = tuple(margins.shape) if isinstance(margins, torch.Tensor) else type(margins).__name__
            raise ValueError(f"margins must be ({robust_losses.shape[0]},) to match robust_losses, got {shape}")
        kappa = self._check_inputs(robust_losses.unsqueeze(1), clean_logits, y, kappa, num_classes=None)
        return self._weighted(margins.detach(), lambda: robust_losses, clean_logits, y, kappa)

    def _weighted(self, margin, robust_losses_of, clean_logits, y, kappa) -> WeightedLoss:
        """Eq. 7 weights from ``margin`` (detached), eq. 8 on the robust losses ``robust_losses_of()`` gives."""
        with torch.no_grad():
            weight = self.weights(margin)
            if self.process_group is not None:
                share, batch_scale, examples = self._global_shares(margin, weight)
            elif self.alpha > 0:
                share, batch_scale = weight / weight.sum(), None  # the sum is at least B * alpha > 0
            else:
                # Same as weight / weight.sum(), but cannot underflow to 0 / 0 for a large gamma.
                share, batch_scale = torch.softmax(-self.gamma * margin.abs(), dim=0), None
            if self.process_group is None:
                examples = weight.new_full((), len(weight))
        robust_losses = robust_losses_of()  # after the weights, in the order the unfused step always computed them
        robust = (share * robust_losses).sum()
        if kappa == 0.0:
            loss = robust
        else:
            if batch_scale is None:
                clean = F.cross_entropy(clean_logits, y)
            else:  # world_size / global B under a group (see _global_shares)
                clean = F.cross_entropy(clean_logits, y, reduction="sum") * batch_scale
            loss = kappa * clean + (1.0 - kappa) * robust
        return WeightedLoss(loss, margin, weight, robust_losses.detach(), examples)

    def _global_shares(self, margin: torch.Tensor, weight: torch.Tensor):
        """Each example's share of the global batch's weight times the group's size, world_size / global B, and
        the global B.

        One process with the global batch computes ``sum_i w_i l_i / sum_i w_i`` over all B examples and
        ``sum_i CE_i / B``. Rank r returns ``N * sum_{i in r} w_i l_i / W`` with ``W`` and ``B`` all-reduced
        (detached, so the reduction adds no gradient path) and ``N`` ranks: the gradient averaging of DDP divides
        the sum over ranks by ``N``, leaving exactly the one-process gradient. (``new_full``, not ``new_tensor``:
        a fill on the device rather than a blocking copy from the host.)
        """
        import torch.distributed as dist

        world_size = dist.get_world_size(self.process_group)
        if self.alpha > 0:
            totals = torch.stack([weight.sum(), weight.new_full((), len(weight))])
            dist.all_reduce(totals, group=self.process_group)
            share = weight / totals[0]
        else:
            # The softmax over the global batch, from a global max (no underflow to 0 / 0) and a global sum.
            logits = -self.gamma * margin.abs()
            top = logits.max().clone()
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.process_group)
            unnormalised = torch.exp(logits - top)
            totals = torch.stack([unnormalised.sum(), weight.new_full((), len(weight))])
            dist.all_reduce(totals, group=self.process_group)
            share = unnormalised / totals[0]
        return share * world_size, world_size / totals[1], totals[1]

    def check(self, where: str = "") -> None:
        """Raise the ValueError of any bad input counted since the last check (with ``sync_checks=False``)."""
        self.deferred.raise_if_bad(where)

    def _check_inputs(self, lb, clean_logits, y, kappa, num_classes: Optional[int] = -1) -> float:
        """``num_classes``: -1 takes it from ``lb`` (C-1 columns); None leaves the logits' class count free."""
        kappa = float(kappa)
        if not 0.0 <= kappa <= 1.0:
            raise ArgumentError("kappa", kappa, "a number in [0, 1]")
        if not isinstance(lb, torch.Tensor) or lb.dim() != 2 or lb.shape[0] == 0 or lb.shape[1] == 0:
            shape = tuple(lb.shape) if isinstance(lb, torch.Tensor) else type(lb).__name__
            raise ValueError(f"lb must be a non-empty (B, C-1) tensor of margin lower bounds, got {shape}")
        batch = lb.shape[0]
        if num_classes == -1:
            num_classes = lb.shape[1] + 1
        elif clean_logits is not None:
            num_classes = clean_logits.shape[-1]
        if kappa > 0 and (clean_logits is None or y is None):
            raise ValueError(f"kappa = {kappa} > 0 mixes in the clean loss: give clean_logits and y")
        if clean_logits is not None and tuple(clean_logits.shape) != (batch, num_classes):
            raise ValueError(f"clean_logits must be ({batch}, {num_classes}) to match lb {tuple(lb.shape)}, "
                             f"got {tuple(clean_logits.shape)}")
        if y is not None:
            if tuple(y.shape) != (batch,):
                raise ValueError(f"y must be ({batch},) to match lb {tuple(lb.shape)}, got {tuple(y.shape)}")
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        bad = ~torch.isfinite(lb).all(dim=1)
        if not self.sync_checks:
            self.deferred.record("lb", bad)
        elif bad.any():  # one host sync per call, like the loss.item() of any logging loop
            where = bad.nonzero().flatten().tolist()
            raise ValueError(f"lb has NaN or inf in {len(where)} of {batch} examples, at batch positions "
                             f"{where[:10]}{' ...' if len(where) > 10 else ''}")
        return kappa
