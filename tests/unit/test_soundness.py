"""Certified lower bounds are never above a margin that sampling or a PGD attack can reach."""
import pytest
import torch
from torch import nn

from lirpa_reweight import BoundedClassifier
from lirpa_reweight.models import MODELS, build_model

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
EPS = 0.01
TOLERANCE = 1e-4


def margins(classifier, x, y):
    """``(B, C-1)`` true margins ``z_y - z_j`` at ``x``, class order with ``y`` skipped."""
    logits = classifier(x)
    others = torch.arange(logits.shape[1])[None] != y[:, None]
    return (logits.gather(1, y[:, None]) - logits)[others].view(len(y), -1)


def lowest_margins_found(classifier, x, y, eps, corners=16, pgd_steps=10):
    """Per example and class, the smallest margin seen at random corners of the box and along a PGD attack."""
    x_low, x_high = classifier.input_box(x, eps)
    found = margins(classifier, x, y).detach()
    gen = torch.Generator().manual_seed(0)
    for _ in range(corners):
        pick = torch.rand(x.shape, generator=gen) < 0.5
        found = torch.minimum(found, margins(classifier, torch.where(pick, x_high, x_low), y).detach())
    x_adv = (x_low + x_high) / 2
    for _ in range(pgd_steps):
        x_adv.requires_grad_(True)
        current = margins(classifier, x_adv, y)
        (grad,) = torch.autograd.grad(current.min(dim=1).values.sum(), x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() - 0.25 * eps * grad.sign(), x_high), x_low)
        found = torch.minimum(found, margins(classifier, x_adv, y).detach())
    return found


def assert_sound(classifier, x, y, methods):
    classifier.eval()
    found = lowest_margins_found(classifier, x, y, EPS)
    for method in methods:
        with torch.no_grad():
            lb = classifier.margin_lower_bounds(x, y, EPS, method)
        violation = (lb - found).max().item()
        assert violation <= TOLERANCE, f"{method}: a found margin is {violation:.2e} below the certified bound"
        assert (lb <= found + TOLERANCE).all()


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_models_are_sound_under_ibp_and_crown_ibp(name, shape):
    torch.manual_seed(0)
    in_shape = SHAPES[shape]
    model = build_model(name, in_shape, 10).eval()
    classifier = BoundedClassifier(model, torch.rand(2, *in_shape), mean=[0.4] * in_shape[0], std=[0.3] * in_shape[0])
    x, y = torch.rand(2, *in_shape), torch.tensor([3, 7])
    assert_sound(classifier, x, y, ["IBP", "CROWN-IBP"])


def stand_in_model(channels):
    """The zoo's layer types (conv, BatchNorm, ReLU, flatten, linear) plus pooling, small enough for full CROWN."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=1, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=1, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_stand_in_model_is_sound_under_every_method_including_full_crown(channels):
    torch.manual_seed(1)
    model = stand_in_model(channels)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    classifier = BoundedClassifier(model, torch.rand(2, channels, 16, 16), mean=[0.5] * channels, std=[0.25] * channels)
    x, y = torch.rand(4, channels, 16, 16), torch.tensor([0, 4, 9, 2])
    assert_sound(classifier, x, y, ["IBP", "CROWN-IBP", "CROWN"])
    # The three methods are ordered as theory says on this model: CROWN is the tightest here.
    with torch.no_grad():
        ibp, crown = (classifier.margin_lower_bounds(x, y, EPS, m) for m in ("IBP", "CROWN"))
    assert (crown >= ibp - TOLERANCE).all()
