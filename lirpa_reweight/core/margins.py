"""Margins in the C-matrix layout of auto_LiRPA's certified-training examples, and what the paper makes of them.

A batch's margins are ``(B, C-1)``: ``z_y - z_j`` for every class ``j != y``, in class order with ``y`` skipped.
Lower bounds of them (from :class:`~lirpa_reweight.core.bounds.BoundedClassifier`) give the worst-case logits of
eq. 2, their eq. 6 margin, and the robust cross-entropy that IBP-style training minimises. Plain torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The ``(B, C-1, C)`` specification matrix whose rows give ``z_y - z_j``, ``j != y`` in class order."""
    eye = torch.eye(num_classes, dtype=torch.get_default_dtype(), device=y.device)
    spec = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    others = y.unsqueeze(1) != torch.arange(num_classes, device=y.device).unsqueeze(0)
    return spec[others].view(y.numel(), num_classes - 1, num_classes)


def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C-1)`` margins ``z_y - z_j`` of plain logits, in the layout of the bounds."""
    others = y.unsqueeze(1) != torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    return (logits.gather(1, y.unsqueeze(1)) - logits)[others].view(logits.shape[0], -1)


def worst_case_logits(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's eq. 2 in C-matrix form: 0 for the true class, ``-lb_j`` for every other class.

    ``lb`` is ``(B, C-1)``, its columns the classes ``j != y`` in class order; the
    result is ``(B, C)`` in label order, differentiable in ``lb``.
    """
    batch, num_others = lb.shape
    others = y.unsqueeze(1) != torch.arange(num_others + 1, device=lb.device).unsqueeze(0)
    logits = lb.new_zeros(batch, num_others + 1)
    # A boolean mask selects in row-major order, i.e. class order with y skipped: lb's order.
    return logits.masked_scatter(others, -lb)


def worst_case_logits_true_first(lb: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with the true class moved to column 0: ``[0, -lb]``, ``(B, C)``.

    Softmax and cross-entropy do not depend on where the true class sits, so this
    layout serves them without the labels.
    """
    return torch.cat([lb.new_zeros(lb.shape[0], 1), -lb], dim=1)


def bound_margin(lb: torch.Tensor) -> torch.Tensor:
    """The paper's eq. 6 on the worst-case logits: ``P(y) - max_{m != y} P(m)``, in ``[-1, 1]``.

    Positive exactly when every margin lower bound is positive, i.e. the example is
    certified; ``y`` is not needed (see :func:`worst_case_logits_true_first`).
    """
    probs = torch.softmax(worst_case_logits_true_first(lb), dim=1)
    return probs[:, 0] - probs[:, 1:].max(dim=1).values


def robust_cross_entropy(lb: torch.Tensor) -> torch.Tensor:
    """Per-example CE of the worst-case logits ``[0, -lb]`` (true class first), ``(B,)``.

    The mean of this is the robust loss of IBP / CROWN-IBP training (auto_LiRPA's examples); CC-IBP's loss is it
    on mixed margins, MTL-IBP's IBP term is it on IBP margins.
    """
    return F.cross_entropy(worst_case_logits_true_first(lb), lb.new_zeros(lb.shape[0], dtype=torch.long),
                           reduction="none")


def fused_margin(robust_losses: torch.Tensor) -> torch.Tensor:
    """The margin of a loss-fusion bound: ``2 exp(-u) - 1`` in ``(-1, 1]`` for robust CE upper bounds ``u`` ``(B,)``.

    ``exp(-u)`` lower-bounds the true class's probability everywhere in the ball, so the margin is positive only
    where ``P(y) > 1/2`` throughout, which implies certified. It stands in for eq. 6 (``P(y) - max_m P(m)`` of the
    worst-case logits) where the margins themselves are never bounded; a surrogate the paper did not test
    (docs/loss-fusion.md).
    """
    return 2.0 * torch.exp(-robust_losses) - 1.0
