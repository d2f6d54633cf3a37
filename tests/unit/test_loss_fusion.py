"""Loss fusion: the fused margin and its weights by hand, the fused loss against upstream's formula computed here
from auto_LiRPA's CrossEntropyWrapper, its gradient against finite differences, and the soundness of its bound."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

from lirpa_reweight.core.bounds import BoundedClassifier, cross_entropy_wrapper
from lirpa_reweight.core.margins import bound_margin, fused_margin, robust_cross_entropy
from lirpa_reweight.core.reweight import WeightedRobustLoss
from lirpa_reweight.errors import ConfigError
from lirpa_reweight.training import build

SHAPE, CLASSES = (1, 6, 6), 4


def small_model():
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 12), nn.ReLU(),
                         nn.Linear(12, CLASSES))


def batch(size=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((size,) + SHAPE, generator=gen), torch.randint(0, CLASSES, (size,), generator=gen)


# --- the margin and the weights, by hand ---------------------------------------------------------------------------

def test_fused_margin_weights_and_loss_on_three_examples_by_hand():
    u = [0.1, math.log(2.0), 2.5]  # P(y) >= 0.905, exactly 1/2, >= 0.082 everywhere in the ball
    margins = [2 * math.exp(-v) - 1 for v in u]
    assert margins[0] > 0 and margins[1] == pytest.approx(0.0, abs=1e-12) and margins[2] < 0
    gamma, alpha, kappa = 3.0, 0.2, 0.4
    weights = [math.exp(-gamma * abs(m)) + alpha for m in margins]
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
    y = torch.tensor([0, 1, 2])
    clean = sum(-math.log(math.exp(row[k]) / sum(math.exp(v) for v in row))
                for row, k in zip(logits.tolist(), y.tolist())) / 3
    robust = sum(w * v for w, v in zip(weights, u)) / sum(weights)

    losses = torch.tensor(u, requires_grad=True)
    out = WeightedRobustLoss(gamma=gamma, alpha=alpha).compute_from_losses(losses, fused_margin(losses), logits, y,
                                                                           kappa=kappa)
    assert out.margins.tolist() == pytest.approx(margins, abs=1e-6)
    assert out.weights.tolist() == pytest.approx(weights, rel=1e-6)
    assert out.loss.item() == pytest.approx(kappa * clean + (1 - kappa) * robust, rel=1e-6)
    (grad,) = torch.autograd.grad(out.loss, losses)  # the weights carry no gradient: d loss / d u_i = (1-k) w_i / W
    assert grad.tolist() == pytest.approx([(1 - kappa) * w / sum(weights) for w in weights], rel=1e-6)


def test_compute_is_compute_from_losses_on_the_robust_ce_and_eq_6_margins():
    lb = torch.tensor([[2.0, 1.0, -0.5], [-1.0, 0.5, 0.2], [0.3, 0.4, 0.1]])
    criterion = WeightedRobustLoss(gamma=5.0, alpha=0.1)
    one, other = criterion.compute(lb), criterion.compute_from_losses(robust_cross_entropy(lb), bound_margin(lb))
    assert torch.equal(one.loss, other.loss) and torch.equal(one.weights, other.weights)


@pytest.mark.parametrize("losses, margins, message", [
    (torch.zeros(3, 1), torch.zeros(3), "robust_losses must be a non-empty"),
    (torch.zeros(3), torch.zeros(2), r"margins must be \(3,\)"),
    (torch.tensor([0.1, float("nan"), 0.2]), torch.zeros(3), "NaN or inf"),
])
def test_compute_from_losses_refuses_bad_input(losses, margins, message):
    with pytest.raises(ValueError, match=message):
        WeightedRobustLoss().compute_from_losses(losses, margins)


# --- the fused bound against upstream's formula ---------------------------------------------------------------------

def upstream_fused_losses(model, x, y, eps, beta):
    """Upstream's CIFAR example's fused robust CE per example, written here from auto_LiRPA's own pieces: a
    BoundedModule of CrossEntropyWrapper(model) with loss_fusion, ub of IBP and of the backward pass mixed with
    beta, plus the Exp node's max_input of the last pass."""
    bounded = BoundedModule(cross_entropy_wrapper()(model), (x, y), bound_opts={"loss_fusion": True})
    ptb = PerturbationLpNorm(norm=float("inf"), x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    inputs = (BoundedTensor(x, ptb), y)
    bounded(*inputs)
    exp = next(node for node in bounded._modules.values() if type(node).__name__ == "BoundExp")
    _, ub = bounded.compute_bounds(x=inputs, IBP=True, method=None, bound_lower=False, bound_upper=True)
    if beta > 0:
        _, crown_ub = bounded.compute_bounds(IBP=False, method="backward", bound_lower=False, bound_upper=True)
        ub = beta * crown_ub + (1 - beta) * ub
    return (torch.log(ub) + exp.max_input).flatten()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_with_gamma_and_maxoff_zero_the_fused_loss_is_upstreams(beta):
    torch.manual_seed(0)
    model = small_model()
    x, y = batch()
    classifier = BoundedClassifier(model, x, device="cpu", loss_fusion=True)
    ours = classifier.certify_fused(x, y, 0.03, method="CROWN-IBP", beta=beta).robust_losses
    loss = WeightedRobustLoss(gamma=0.0, alpha=0.1).compute_from_losses(ours, fused_margin(ours)).loss
    theirs = upstream_fused_losses(model, x, y, 0.03, beta)
    torch.testing.assert_close(loss, theirs.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fused_ibp_bound_is_the_unfused_robust_ce():
    torch.manual_seed(0)
    x, y = batch()
    classifier = BoundedClassifier(small_model(), x, device="cpu", loss_fusion=True)
    fused = classifier.certify_fused(x, y, 0.03, method="IBP").robust_losses
    torch.testing.assert_close(fused, robust_cross_entropy(classifier.margin_lower_bounds(x, y, 0.03, "IBP")))


def directional_derivatives(loss_of, parameter, step=1e-6):
    """(autograd, central finite difference) of ``loss_of()`` along a random direction of ``parameter``."""
    direction = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(4), dtype=parameter.dtype)
    (grad,) = torch.autograd.grad(loss_of(), parameter)
    with torch.no_grad():
        parameter += step * direction
        plus = loss_of().item()
        parameter -= 2 * step * direction
        minus = loss_of().item()
        parameter += step * direction
    return (grad * direction).sum().item(), (plus - minus) / (2 * step)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.7, 1.0])
def test_fused_gradient_matches_finite_differences_in_float64(beta):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = small_model()
        x, y = batch()
        classifier = BoundedClassifier(model, x, device="cpu", loss_fusion=True)

        def ours():
            return classifier.certify_fused(x, y, 0.03, method="CROWN-IBP", beta=beta).robust_losses.sum()

        analytic, numeric = directional_derivatives(ours, model[3].weight)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        if 0 < beta < 1:
            # Upstream's formula adds the backward pass's (detached) shift to the mixed ub, dropping the IBP term's
            # dependence on its own shift: its gradient is not the derivative of its value.
            analytic, numeric = directional_derivatives(
                lambda: upstream_fused_losses(model, x, y, 0.03, beta).sum(), model[3].weight)
            assert abs(analytic - numeric) > 1e-2 * abs(numeric)
    finally:
        torch.set_default_dtype(default)


# --- soundness of the fused bound on a trained model ----------------------------------------------------------------

def trained_classifier(eps):
    """A tiny model trained with fused IBP until part of the batch is certified by the fused margin."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    prototypes = torch.rand((CLASSES,) + SHAPE, generator=gen)
    y = torch.arange(32) % CLASSES
    x = (0.7 * prototypes[y] + 0.3 * torch.rand((32,) + SHAPE, generator=gen)).clamp(0, 1)
    model = small_model()
    classifier = BoundedClassifier(model, x[:2], device="cpu", loss_fusion=True)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(150):
        loss = classifier.certify_fused(x, y, eps, method="IBP").robust_losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.eval(), x, y


def highest_ce_found(classifier, x, y, eps, samples=32, pgd_steps=20):
    """Per example, the highest CE seen at random points and corners of the ball and along a PGD attack, and
    whether any of those points is misclassified."""
    x_low, x_high = classifier.input_box(x, eps)
    gen = torch.Generator().manual_seed(0)
    points = [x_low + (x_high - x_low) * torch.rand(x.shape, generator=gen) for _ in range(samples)]
    points += [torch.where(torch.rand(x.shape, generator=gen) < 0.5, x_high, x_low) for _ in range(samples)]
    x_adv = x.clone()
    for _ in range(pgd_steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(classifier(x_adv), y), x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() + 0.25 * eps * grad.sign(), x_high), x_low)
        points.append(x_adv)
    with torch.no_grad():
        logits = [classifier(point) for point in points]
    ce = torch.stack([F.cross_entropy(out, y, reduction="none") for out in logits]).max(0).values
    fooled = torch.stack([out.argmax(1) != y for out in logits]).any(0)
    return ce, fooled


@pytest.mark.parametrize("method, beta", [("IBP", None), ("CROWN-IBP", None), ("CROWN-IBP", 0.5)])
def test_fused_bound_is_sound_on_a_trained_model(method, beta):
    eps = 0.02
    classifier, x, y = trained_classifier(eps)
    with torch.no_grad():
        u = classifier.certify_fused(x, y, eps, method=method, beta=beta).robust_losses
    margin = fused_margin(u)
    assert 0 < int((margin > 0).sum()) <= len(y)  # the model learnt to certify some examples
    ce, fooled = highest_ce_found(classifier, x, y, eps)
    assert (u >= ce - 1e-5).all(), (u - ce).min()
    assert not fooled[margin > 0].any()


# --- construction and config ----------------------------------------------------------------------------------------

def test_fusion_leaves_the_classifiers_parameters_and_state_dict_as_they_were():
    torch.manual_seed(0)
    x, _ = batch()
    plain = BoundedClassifier(small_model(), x, device="cpu")
    fused = BoundedClassifier(small_model(), x, device="cpu", loss_fusion=True)
    assert list(plain.state_dict()) == list(fused.state_dict())
    assert [id(p) for p in fused.parameters()] == [id(p) for p in fused.fused.parameters()]


def test_certify_fused_needs_the_fused_graph_and_ibp_or_crown_ibp():
    x, y = batch()
    with pytest.raises(ValueError, match="loss_fusion=True"):
        BoundedClassifier(small_model(), x, device="cpu").certify_fused(x, y, 0.01)
    with pytest.raises(ValueError, match="'IBP' or 'CROWN-IBP'"):
        BoundedClassifier(small_model(), x, device="cpu", loss_fusion=True).certify_fused(x, y, 0.01, method="CROWN")


@pytest.mark.parametrize("bound, value, message", [
    ("sabr", "true", r"bound.loss_fusion=True: false for SABR \(loss fusion bounds one cross-entropy"),
    ("mtl_ibp", "true", "false for MTL-IBP"),
    ("ibp", "1", "bound.loss_fusion=1: true or false"),
])
def test_config_refuses_fusion_where_it_cannot_apply(compose, bound, value, message):
    cfg = compose([f"bound={bound}", f"++bound.loss_fusion={value}", "run_dir=unused"])
    with pytest.raises(ConfigError, match=message):
        build.read_config(cfg)


def test_the_wrapper_graph_gathers_the_true_logit_with_an_op_auto_lirpa_bounds():
    # torch 2.9+ registers opset 11's gather only inside its own export: the compat patch supplies GatherElements.
    from lirpa_reweight._compat.patches import _gather_symbolic_at_opset_12

    assert not _gather_symbolic_at_opset_12().__module__.endswith("symbolic_opset9")
    x, _ = batch()
    fused = BoundedClassifier(small_model(), x, device="cpu", loss_fusion=True).fused
    assert "BoundGatherElements" in {type(node).__name__ for node in fused.modules()}
