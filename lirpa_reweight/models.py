"""The model zoo: the CNNs of the paper and its successors, built by name.

Every model is a plain ``nn.Sequential`` of Conv2d / BatchNorm / ReLU / Flatten /
Linear, the shape auto_LiRPA traces best. There is no normalisation layer inside:
``BoundedClassifier`` normalises outside the bounded graph. Flattened sizes are
computed from the input shape, so each model builds for MNIST (1x28x28),
CIFAR-10 (3x32x32) or any other input that its convolutions do not shrink away.

Weights use PyTorch's default initialisation; ``lirpa_reweight.fast.ibp_init.ibp_init_`` applies Shi et al.'s (2021)
IBP initialisation to any of them. The ``*_bn`` models are BatchNorm twins (BN after every hidden layer, as in
Shi et al.'s fast training); there are no residual blocks in the zoo.
"""
from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .errors import ArgumentError


class Conv(NamedTuple):
    """One convolution: ``out_channels`` filters of ``kernel x kernel``, then ReLU."""

    out_channels: int
    kernel: int
    stride: int
    padding: int


def conv_output_size(size: int, conv: Conv) -> int:
    """Spatial size after ``conv`` (PyTorch's formula, dilation 1)."""
    return (size + 2 * conv.padding - conv.kernel) // conv.stride + 1


def feedforward_cnn(in_shape: tuple[int, int, int], num_classes: int, convs: Sequence[Conv],
                    hidden: Sequence[int], batch_norm: bool = False) -> nn.Sequential:
    """Conv-ReLU blocks, Flatten, Linear-ReLU blocks, then a Linear to ``num_classes`` logits.

    With ``batch_norm`` every hidden layer is followed by BatchNorm before its ReLU.
    """
    channels, height, width = in_shape
    layers: list[nn.Module] = []
    for conv in convs:
        height, width = conv_output_size(height, conv), conv_output_size(width, conv)
        if height < 1 or width < 1:
            raise ValueError(f"input shape {tuple(in_shape)} is too small for these convolutions {list(convs)}")
        layers.append(nn.Conv2d(channels, conv.out_channels, conv.kernel, stride=conv.stride, padding=conv.padding))
        if batch_norm:
            layers.append(nn.BatchNorm2d(conv.out_channels))
        layers.append(nn.ReLU())
        channels = conv.out_channels
    layers.append(nn.Flatten())
    features = channels * height * width
    for size in hidden:
        layers.append(nn.Linear(features, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU())
        features = size
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


# Gowal et al. 2019's "small", "medium" and "large" use TF 'VALID' padding for small/medium and
# 'SAME' for large (deepmind/interval-bound-propagation examples/train.py); CROWN-IBP's
# IBP_large (model_defs_gowal.py) writes 'SAME' as padding=1.
DM_LARGE_CONVS = (Conv(64, 3, 1, 1), Conv(64, 3, 1, 1), Conv(128, 3, 2, 1), Conv(128, 3, 1, 1), Conv(128, 3, 1, 1))


def dm_small(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # Gowal et al. 2019, DM-small: Conv16-4x4/2 - Conv32-4x4/1 - FC100 (VALID padding).
    return feedforward_cnn(in_shape, num_classes, [Conv(16, 4, 2, 0), Conv(32, 4, 1, 0)], [100])


def dm_medium(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # Gowal et al. 2019, DM-medium: Conv32-3/1 - Conv32-4/2 - Conv64-3/1 - Conv64-4/2 - FC512 - FC512 (VALID).
    convs = [Conv(32, 3, 1, 0), Conv(32, 4, 2, 0), Conv(64, 3, 1, 0), Conv(64, 4, 2, 0)]
    return feedforward_cnn(in_shape, num_classes, convs, [512, 512])


def dm_large(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # Gowal et al. 2019, DM-large, as CROWN-IBP's IBP_large: Conv64-64-128/2-128-128 (3x3, pad 1) - FC512.
    return feedforward_cnn(in_shape, num_classes, DM_LARGE_CONVS, [512])


def cnn_4layer(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # auto_LiRPA examples' cnn_4layer(width=4, linear_size=100), i.e. Wong & Kolter's mnist_model.
    return feedforward_cnn(in_shape, num_classes, [Conv(16, 4, 2, 1), Conv(32, 4, 2, 1)], [100])


def dm_small_bn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # DM-small with BatchNorm after every hidden layer (Shi et al. 2021 put BN after every conv/linear layer).
    return feedforward_cnn(in_shape, num_classes, [Conv(16, 4, 2, 0), Conv(32, 4, 1, 0)], [100], batch_norm=True)


def cnn_4layer_bn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # cnn_4layer with BatchNorm after every hidden layer: the CPU-sized model of the fast recipes.
    return feedforward_cnn(in_shape, num_classes, [Conv(16, 4, 2, 1), Conv(32, 4, 2, 1)], [100], batch_norm=True)


def cnn_7layer(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    # Shi et al. 2021 "cnn" = cnn_7layer_bn2 (Fast-Certified-Robust-Training models/feedforward.py): DM-large + BN.
    return feedforward_cnn(in_shape, num_classes, DM_LARGE_CONVS, [512], batch_norm=True)


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "dm_small": dm_small,
    "dm_medium": dm_medium,
    "dm_large": dm_large,
    "cnn_4layer": cnn_4layer,
    "dm_small_bn": dm_small_bn,
    "cnn_4layer_bn": cnn_4layer_bn,
    "cnn_7layer": cnn_7layer,
}


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def model_builder(name: str) -> Callable[[tuple[int, int, int], int], nn.Module]:
    """The builder registered as ``name``, or :class:`~lirpa_reweight.errors.ArgumentError` naming the choices."""
    if name not in MODELS:
        raise ArgumentError("name", name, f"one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The model registered as ``name`` for ``in_shape`` = (channels, height, width) and ``num_classes``."""
    builder = model_builder(name)
    try:
        shape = tuple(in_shape)
    except TypeError:
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}") from None
    if len(shape) != 3 or not all(_is_int(v) and v > 0 for v in shape):
        raise ValueError(f"in_shape must be 3 positive integers (channels, height, width), got {in_shape!r}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return builder(tuple(int(v) for v in shape), int(num_classes))


def relu_units(model: nn.Module, example: torch.Tensor) -> int:
    """How many ReLU outputs one example produces: the size of the problem full CROWN must bound."""
    count = 0

    def hook(_module, _inputs, output):
        nonlocal count
        count += output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return count
