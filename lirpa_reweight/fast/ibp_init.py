"""IBP initialisation (Shi et al. 2021, "Fast Certified Robust Training with Short Warmup", sec. 3.2).

Every Conv/Linear weight but the last is drawn from N(0, sigma^2) with sigma = sqrt(2*pi) / fan_in, so that
the expected width of an interval grows by a factor of about 1 per layer at initialisation instead of
exploding (their ``manual_init.py``, ``ibp_init``). ``fan_in`` is torch's: ``in_features`` for Linear,
``in_channels * kh * kw`` for Conv. As in their code, biases, BatchNorm and the last (logit) layer keep their
initialisation. Plain torch: usable on any model, from any training loop.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ArgumentError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def ibp_std(weight: torch.Tensor) -> float:
    """Shi et al.'s standard deviation for ``weight``: ``sqrt(2*pi) / fan_in``."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2 * math.pi) / fan_in


@torch.no_grad()
def ibp_init_(model: nn.Module, residual_layers: Iterable[str] = ()) -> nn.Module:
    """Re-initialise ``model`` in place for IBP training and return it.

    Args:
        model: any module; its Conv/Linear layers are visited in ``named_modules`` order, and the last of
            them (the logit layer) is left untouched.
        residual_layers: names (as in ``named_modules``) of layers that read a residual sum (their input is
            ``a + b``, possibly through a ReLU); their weights are halved, as Shi et al.'s ``ibp_init`` does
            for every Conv/Linear node fed by a ``BoundAdd``, so that the sum of two branches keeps the interval
            growth of one. The zoo's models are all feed-forward and need none.
    """
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, WEIGHTED)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear layer to initialise")
    known = {name for name, _ in layers}
    residual = set(residual_layers)
    unknown = residual - known
    if unknown:
        raise ValueError(f"residual_layers {sorted(unknown)} are not Conv/Linear layers of the model; "
                         f"its layers are {sorted(known)}")
    for name, layer in layers[:-1]:
        layer.weight.normal_(0.0, ibp_std(layer.weight))
    for name, layer in layers:
        if name in residual:  # after the redraw, and for the last layer too, as in Shi et al.'s code
            layer.weight /= 2
    return model


INITS = ("default", "ibp")


def initializer(init: str):
    """The initialisation named ``init``: "default" (PyTorch's, unchanged: None) or "ibp" (:func:`ibp_init_`)."""
    if init not in INITS:
        raise ArgumentError("init", init, f"one of {list(INITS)}")
    return ibp_init_ if init == "ibp" else None


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Apply the initialisation named ``init`` (see :func:`initializer`) to ``model``; returns it."""
    function = initializer(init)
    return model if function is None else function(model)
