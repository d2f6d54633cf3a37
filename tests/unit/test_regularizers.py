"""Shi et al.'s warm-up regularisers against hand computations on a net with hand-set weights."""
import warnings

import pytest
import torch
from torch import nn

import lirpa_reweight as lr
from lirpa_reweight.models import build_model
from lirpa_reweight.fast.regularizers import WarmupRegularizer, relu_input_bounds

from auto_LiRPA import BoundedModule, BoundedTensor  # noqa: E402  (after lirpa_reweight: compat patches)
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402

EPS = 0.1


def hand_net():
    """2 -> 3 -> 2 -> 1 with ReLUs; at x = (0.5, 0.5), eps 0.1 the pre-ReLU intervals are (by hand):

    layer 1: W1 x + b1 = (1, -0.25, 0), radius |W1| 0.1 = (0.2, 0.05, 0.4):
             [0.8, 1.2] active, [-0.3, -0.2] inactive, [-0.4, 0.4] unstable;
    after ReLU: [0.8, 1.2], [0, 0], [0, 0.4], i.e. centres (1, 0, 0.2), radii (0.2, 0, 0.2);
    layer 2: rows (1, 0, 1) and (-1, 0, 0): centres (1.2, -1), radii (0.4, 0.2):
             [0.8, 1.6] active, [-1.2, -0.8] inactive.
    """
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -0.5], [2.0, 2.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -2.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]))
        net[2].bias.zero_()
        net[4].weight.fill_(1.0)
        net[4].bias.zero_()
    return net


def bounded_hand_net(method="IBP"):
    net = hand_net()
    x = torch.tensor([[0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = BoundedModule(net, x)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=EPS))
    bounded(bx)
    bounded.compute_bounds(method=method)
    return net, bounded


# The terms by hand, tol 0.5 (input radius r0 = 0.1):
# layer 1 tightness: mean radius 0.65/3, r0/r = 6/13 < 0.5: (0.5 - 6/13) / 0.5 = 1/13.
# layer 1 balance: centres (1, -0.25, 0): mean ratio (1/3) / (0.25/3) = 4 -> folded 1/4: (0.5 - 0.25)/0.5 = 1/2;
#   centre mean 0.25, squared deviations (0.5625, 0.25, 0.0625): variance ratio 2.25 -> 4/9: (0.5 - 4/9)/0.5 = 1/9.
# layer 2 tightness: mean radius 0.3, r0/r = 1/3: (0.5 - 1/3)/0.5 = 1/3.
# layer 2 balance: mean ratio 0.6/0.5 -> 5/6 >= 0.5, variance ratio 1: 0.
TIGHTNESS = (1 / 13 + 1 / 3) / 2
RELU = (1 / 2 + 1 / 9 + 0) / 2


def test_relu_input_bounds_are_the_hand_computed_intervals():
    _, bounded = bounded_hand_net()
    (l1, u1), (l2, u2) = relu_input_bounds(bounded)
    torch.testing.assert_close(l1, torch.tensor([[0.8, -0.3, -0.4]]))
    torch.testing.assert_close(u1, torch.tensor([[1.2, -0.2, 0.4]]))
    torch.testing.assert_close(l2, torch.tensor([[0.8, -1.2]]))
    torch.testing.assert_close(u2, torch.tensor([[1.6, -0.8]]))


def test_each_term_matches_the_hand_computation():
    _, bounded = bounded_hand_net()
    terms = WarmupRegularizer(tol=0.5).unweighted(bounded)
    assert terms["tightness"].item() == pytest.approx(TIGHTNESS, rel=1e-5)
    assert terms["relu"].item() == pytest.approx(RELU, rel=1e-5)
    only = WarmupRegularizer(tol=0.5, terms=["relu"]).unweighted(bounded)
    assert set(only) == {"relu"}


@pytest.mark.parametrize("eps_base, weight", [(0.1, 0.5 * 0.75), (0.3, 0.5 * 0.25), (0.0, 0.0), (0.4, 0.0), (0.5, 0.0)])
def test_weight_is_lambda_times_the_remaining_ramp(eps_base, weight):
    _, bounded = bounded_hand_net()
    reg = WarmupRegularizer(tol=0.5, lam=0.5)
    assert reg.weight(eps_base, 0.4) == pytest.approx(weight)
    assert reg(bounded, eps_base, 0.4).item() == pytest.approx(weight * (TIGHTNESS + RELU), rel=1e-5)


def test_gradients_reach_the_hidden_weights():
    net, bounded = bounded_hand_net()
    WarmupRegularizer()(bounded, 0.1, 0.4).backward()
    for layer in (net[0], net[2]):
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        assert layer.weight.grad.abs().sum() > 0
    # The gradient is the regulariser's own: central differences through fresh bound computations agree.
    def value():
        bounded(BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=EPS)))
        bounded.compute_bounds(method="IBP")
        return WarmupRegularizer()(bounded, 0.1, 0.4).item()

    x, step = torch.tensor([[0.5, 0.5]]), 1e-3
    for layer, index in ((net[0], (0, 0)), (net[0], (2, 1)), (net[2], (0, 2)), (net[2], (1, 0))):
        with torch.no_grad():
            layer.weight[index] += step
            up = value()
            layer.weight[index] -= 2 * step
            down = value()
            layer.weight[index] += step
        assert abs(layer.weight.grad[index].item()) > 1e-2
        assert layer.weight.grad[index].item() == pytest.approx((up - down) / (2 * step), rel=1e-2, abs=1e-4)


def test_a_layer_with_no_stable_unit_adds_nothing_and_no_nan():
    # Every unit unstable: the balance ratios are 0/0 (NaN in Shi et al.'s code, which skips the term).
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(-1.0)
    x = torch.tensor([[0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = BoundedModule(net, x)
    bounded(BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=EPS)))
    bounded.compute_bounds(method="IBP")
    reg = WarmupRegularizer(tol=0.5)
    assert reg.unweighted(bounded)["relu"].item() == 0.0
    reg(bounded, 0.1, 0.4).backward()
    assert torch.isfinite(net[0].weight.grad).all()


def test_classifier_certify_feeds_it_under_ibp_and_crown_ibp_alike():
    # CROWN-IBP's intermediate bounds are IBP's, so the regulariser reads the same intervals after either.
    torch.manual_seed(0)
    classifier = lr.BoundedClassifier(build_model("cnn_4layer_bn", (1, 12, 12), 10), torch.rand(2, 1, 12, 12),
                                      device="cpu", mean=[0.5], std=[0.25]).train()
    x, y = torch.rand(16, 1, 12, 12), torch.randint(10, (16,))
    reg = WarmupRegularizer()
    classifier.certify(x, y, 0.05, method="IBP")
    ibp = reg(classifier, 0.05, 0.2)
    classifier.certify(x, y, 0.05, method="CROWN-IBP", beta=0.5)
    crown_ibp = reg(classifier.bounded, 0.05, 0.2)
    assert ibp.item() > 0
    torch.testing.assert_close(ibp, crown_ibp)
    crown_ibp.backward()
    first_conv = classifier.model[0]
    assert first_conv.weight.grad.abs().sum() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bad value tol=0: a number > 0"):
        WarmupRegularizer(tol=0)
    with pytest.raises(ValueError, match="lam"):
        WarmupRegularizer(lam=-1)
    with pytest.raises(ValueError, match="terms"):
        WarmupRegularizer(terms=["std"])
    net = hand_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = BoundedModule(net, torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match="compute_bounds"):
        WarmupRegularizer()(bounded, 0.1, 0.4)
