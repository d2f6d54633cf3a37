"""How much of a ``BoundedModule``'s clean forward pass a step needs: all of it, no autograd, or none.

``BoundedClassifier.certify`` runs the model forward on the ``BoundedTensor`` before it bounds it (train-mode
BatchNorm bounds read that pass's batch statistics), and returns that pass's logits. When the logits feed no loss
(kappa 0) the pass needs no autograd graph, and when they feed nothing at all it need not run: auto_LiRPA then
sets the input inside ``compute_bounds(x=...)`` and computes the forward values the bounds read (the parameters',
say) on demand. Both hold only where the bounds read nothing of the pass itself: BatchNorm's and Dropout's bounds
read its statistics and masks, and a node that does not depend on the input (a transposed weight) takes its
interval, and its gradient, from the forward pass. Which graphs qualify is decided once per graph by
:func:`clean_pass_detachable`: a probe that computes the IBP and the CROWN-IBP bounds and their gradients all
three ways and asks for the same numbers, bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

from .margins import margin_spec

# What certify's ``clean`` argument accepts: the logits train ("grad"), only feed a metric ("no_grad"), or are
# not wanted ("none").
CLEAN_PASSES = ("grad", "no_grad", "none")
# Modules whose bounds read values of the forward pass itself (batch statistics, the dropout mask): refused
# without a probe (the probe's forward would also move BatchNorm's running statistics and draw random masks).
_READ_THEIR_FORWARD = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
_PROBE_EPS = 0.05  # pixel units: a ball wide enough to make some ReLUs unstable in any model


def clean_pass_detachable(classifier, example_shape: tuple) -> bool:
    """True when ``classifier``'s bounds and their gradients are the same with the clean pass recorded by
    autograd, run under ``no_grad``, or not run.

    ``example_shape``: one input's shape (C, H, W). The probe runs in train mode (the caller's mode is put back),
    on a batch of two from its own generator (the global random stream is untouched), with
    ``torch.autograd.grad`` (no ``.grad`` is left on the parameters).
    """
    if any(isinstance(module, _READ_THEIR_FORWARD) for module in classifier.model.modules()):
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2,) + tuple(example_shape), generator=generator).to(classifier.device)
    y = torch.tensor([0, 1], device=classifier.device)
    params = list(classifier.model.parameters())
    was_training = classifier.training
    classifier.train()  # the mode in which gradients flow (and the one that training asks about)
    try:
        with torch.enable_grad():
            recorded, *others = (_bounds_and_gradients(classifier, x, y, params, clean) for clean in CLEAN_PASSES)
    finally:
        classifier.train(was_training)
    return all(_same(a, b) for other in others for a, b in zip(recorded, other))


def _bounds_and_gradients(classifier, x, y, params, clean: str) -> list:
    """IBP and CROWN-IBP margin bounds of ``(x, y)`` and the gradients of their sum, the clean pass run as
    ``certify`` runs it for ``clean``."""
    results = []
    spec = margin_spec(y, classifier.num_classes)
    for method in ("IBP", "CROWN-IBP"):
        if clean == "none":  # leave the forward values of another batch behind: stale reads must show
            with torch.no_grad():
                classifier.bounded(classifier._bounded_input(1 - x, y, _PROBE_EPS)[0])
        _, inputs = classifier._clean_pass(classifier._bounded_input(x, y, _PROBE_EPS)[0], clean)
        lb = classifier._margin_bounds(method, None, spec, inputs)
        results += [lb.detach(), *_gradients(lb.sum(), params)]
    return results


def _gradients(value: torch.Tensor, params: list) -> list:
    """d value / d p for each of ``params``; None for those it does not reach. Which parameters require a
    gradient is read after the pass: auto_LiRPA's parameter nodes set ``requires_grad`` to the module's mode in
    every forward (an eval-mode attack leaves it off until the next train-mode pass)."""
    live = [p for p in params if p.requires_grad]
    if not value.requires_grad or not live:
        return [None] * len(params)
    grads = dict(zip(map(id, live), torch.autograd.grad(value, live, allow_unused=True)))
    return [grads.get(id(p)) for p in params]


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)
