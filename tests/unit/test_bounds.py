"""BoundedClassifier against an independent interval propagation, and the identities its bounds must obey."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lirpa_reweight import BOUND_METHODS as METHODS, BoundedClassifier, bound_margin, worst_case_logits
from lirpa_reweight.core.margins import margin_spec

MEAN, STD = [0.25], [0.5]


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=1, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 5),
    )


def interval_propagation(model, x_low, x_high, spec):
    """Plain IBP for Sequential models, written from the definition; the last Linear is fused with ``spec``
    (as auto_LiRPA does with its C matrix)."""
    low, high = x_low, x_high
    layers = list(model)
    for i, layer in enumerate(layers):
        mid, rad = (high + low) / 2, (high - low) / 2
        if isinstance(layer, nn.Linear) and i == len(layers) - 1:
            weight = spec @ layer.weight  # (B, K, in)
            bias = spec @ layer.bias
            mid = torch.einsum("bki,bi->bk", weight, mid) + bias
            rad = torch.einsum("bki,bi->bk", weight.abs(), rad)
        elif isinstance(layer, nn.Linear):
            mid, rad = F.linear(mid, layer.weight, layer.bias), F.linear(rad, layer.weight.abs())
        elif isinstance(layer, nn.Conv2d):
            mid = F.conv2d(mid, layer.weight, layer.bias, layer.stride, layer.padding)
            rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding)
        elif isinstance(layer, nn.BatchNorm2d):  # eval mode: a per-channel affine map
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            shift = layer.bias - layer.running_mean * scale
            mid = mid * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
            rad = rad * scale.abs().view(1, -1, 1, 1)
        elif isinstance(layer, nn.AvgPool2d):
            mid, rad = layer(mid), layer(rad)
        elif isinstance(layer, nn.ReLU):
            low, high = torch.relu(mid - rad), torch.relu(mid + rad)
            continue
        elif isinstance(layer, nn.Flatten):
            mid, rad = layer(mid), layer(rad)
        else:
            raise NotImplementedError(type(layer))
        low, high = mid - rad, mid + rad
    return low


@pytest.fixture(scope="module")
def classifier():
    model = small_cnn()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model[3].running_mean.uniform_(-0.5, 0.5)
        model[3].running_var.uniform_(0.5, 2.0)
    model.eval()
    return BoundedClassifier(model, torch.rand(2, 1, 8, 8), mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 8, 8, generator=gen), torch.tensor([0, 3, 4, 1])


def test_ibp_matches_independent_interval_propagation(classifier, batch):
    x, y = batch
    eps = torch.tensor([0.0, 0.01, 0.05, 0.2])
    lb = classifier.margin_lower_bounds(x, y, eps, "IBP")
    x_low = ((x - eps.view(-1, 1, 1, 1)).clamp(0, 1) - MEAN[0]) / STD[0]
    x_high = ((x + eps.view(-1, 1, 1, 1)).clamp(0, 1) - MEAN[0]) / STD[0]
    expected = interval_propagation(classifier.model, x_low, x_high, margin_spec(y, 5))
    assert lb.shape == (4, 4)
    torch.testing.assert_close(lb, expected, atol=1e-5, rtol=1e-5)


def test_margin_spec_rows_are_true_minus_each_other_class():
    spec = margin_spec(torch.tensor([2]), 4)
    expected = torch.tensor([[[-1.0, 0, 1, 0], [0, -1, 1, 0], [0, 0, 1, -1]]])
    torch.testing.assert_close(spec, expected)


def test_crown_ibp_with_beta_zero_is_ibp_and_beta_mixes(classifier, batch):
    x, y = batch
    ibp = classifier.margin_lower_bounds(x, y, 0.03, "IBP")
    crown_ibp = classifier.margin_lower_bounds(x, y, 0.03, "CROWN-IBP")
    torch.testing.assert_close(classifier.margin_lower_bounds(x, y, 0.03, "CROWN-IBP", beta=0.0), ibp)
    mixed = classifier.margin_lower_bounds(x, y, 0.03, "CROWN-IBP", beta=0.25)
    torch.testing.assert_close(mixed, 0.25 * crown_ibp + 0.75 * ibp)
    assert not torch.allclose(ibp, crown_ibp)  # otherwise the mixing test says nothing


@pytest.mark.parametrize("method", METHODS)
def test_zero_eps_gives_the_clean_margin(classifier, batch, method):
    x, y = batch
    logits, lb = classifier.certify(x, y, 0.0, method)
    clean = logits.gather(1, y[:, None]) - logits
    others = torch.arange(5)[None] != y[:, None]
    torch.testing.assert_close(lb, clean[others].view(4, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_per_example_eps_equal_entries_equal_float_eps_and_stay_per_example(classifier, batch, method):
    x, y = batch
    as_float = classifier.margin_lower_bounds(x, y, 0.02, method)
    as_tensor = classifier.margin_lower_bounds(x, y, torch.full((4,), 0.02), method)
    torch.testing.assert_close(as_tensor, as_float)
    # Example 0's bound must not depend on the other examples' radii.
    changed = classifier.margin_lower_bounds(x, y, torch.tensor([0.02, 0.3, 0.0, 0.1]), method)
    torch.testing.assert_close(changed[0], as_float[0])
    assert (changed[1] < as_float[1]).all()  # a larger radius loosens example 1's bound


@pytest.mark.parametrize("method", [m for m in METHODS if m != "alpha-CROWN"])  # alpha-CROWN: evaluation only
def test_gradients_reach_the_wrapped_model(method):
    model = small_cnn().train()
    classifier = BoundedClassifier(model, torch.rand(3, 1, 8, 8))
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    classifier.margin_lower_bounds(x, y, 0.05, method).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_train_mode_batchnorm_uses_the_current_batch():
    model = small_cnn().train()
    classifier = BoundedClassifier(model, torch.rand(3, 1, 8, 8))
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    lb_a = classifier.margin_lower_bounds(x, y, 0.0, "IBP")
    # A different batch in between must not leak its statistics into this batch's bounds.
    classifier.margin_lower_bounds(torch.rand(3, 1, 8, 8) * 5, y, 0.0, "IBP")
    lb_b = classifier.margin_lower_bounds(x, y, 0.0, "IBP")
    torch.testing.assert_close(lb_a, lb_b)
    with torch.no_grad():
        logits = model(x)
    clean = (logits.gather(1, y[:, None]) - logits)[torch.arange(5)[None] != y[:, None]].view(3, 4)
    torch.testing.assert_close(lb_b, clean, atol=1e-5, rtol=0)


def test_wrapper_keeps_the_users_train_eval_mode():
    model = small_cnn().eval()
    classifier = BoundedClassifier(model, torch.rand(2, 1, 8, 8))
    assert not classifier.training and not model.training
    classifier.train()
    assert model.training and all(m.training for m in classifier.bounded.modules())


def test_worst_case_logits_and_margin_by_hand():
    lb = torch.tensor([[2.0, 1.0], [-0.5, 3.0]])
    y = torch.tensor([1, 0])
    torch.testing.assert_close(worst_case_logits(lb, y), torch.tensor([[-2.0, 0.0, -1.0], [0.0, 0.5, -3.0]]))
    # Example 0: softmax([0, -2, -1]); example 1: softmax([0, 0.5, -3]).
    z0 = [1.0, math.exp(-2), math.exp(-1)]
    z1 = [1.0, math.exp(0.5), math.exp(-3)]
    expected = [(z0[0] - z0[2]) / sum(z0), (z1[0] - z1[1]) / sum(z1)]
    torch.testing.assert_close(bound_margin(lb), torch.tensor(expected))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=-0.1), "eps must be finite and >= 0"),
        (dict(eps=float("nan")), "eps must be finite"),
        (dict(eps=torch.zeros(3)), r"\(4,\) tensor"),
        (dict(method="PGD"), "method must be one of"),
        (dict(method="IBP", beta=0.5), "needs method='CROWN-IBP'"),
        (dict(method="CROWN-IBP", beta=1.5), r"beta must lie in \[0, 1\]"),
        (dict(y=torch.tensor([0, 1, 2, 7])), r"labels must lie in \[0, 4\]"),
        (dict(y=torch.tensor([0, 1])), "y of shape"),
    ],
)
def test_bad_input_is_refused_clearly(classifier, batch, kwargs, message):
    x, y = batch
    args = dict(x=x, y=y, eps=0.01, method="IBP")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        classifier.margin_lower_bounds(**args)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="both mean and std"):
        BoundedClassifier(small_cnn(), torch.rand(2, 1, 8, 8), mean=[0.5])
    with pytest.raises(ValueError, match="std must be positive"):
        BoundedClassifier(small_cnn(), torch.rand(2, 1, 8, 8), mean=[0.5], std=[0.0])
    with pytest.raises(ValueError, match="data_range"):
        BoundedClassifier(small_cnn(), torch.rand(2, 1, 8, 8), data_range=(1.0, 0.0))


def test_deferred_eps_and_label_checks_raise_from_check():
    from torch import nn
    from lirpa_reweight.core.bounds import BoundedClassifier
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    clf = BoundedClassifier(model, torch.rand(2, 1, 2, 2), device="cpu", sync_checks=False)
    x = torch.rand(3, 1, 2, 2)
    clf.certify(x, torch.tensor([0, 3, -1]), torch.tensor([0.1, -0.1, float("nan")]))
    with pytest.raises(ValueError, match=r"epoch 5: eps was negative or not finite in 2 value\(s\); "
                                         r"labels were outside \[0, num_classes\) in 2 value\(s\)"):
        clf.check("epoch 5")
