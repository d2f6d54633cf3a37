"""The training methods (IBP, CROWN-IBP, SABR, CC-IBP, MTL-IBP): identities at their coefficients' ends,
soundness in their own boxes, the shared PGD attack, and IBP / CROWN-IBP unchanged from the direct bound call."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lirpa_reweight import BoundedClassifier
from lirpa_reweight.core.margins import logit_margins, robust_cross_entropy
from lirpa_reweight.core.reweight import WeightedRobustLoss
from lirpa_reweight.methods import TRAINING_METHODS, build_method
from lirpa_reweight.methods.attack import AttackSettings, adversarial_point, pgd, pgd_attack
from lirpa_reweight.methods.sabr import small_box

EPS = torch.tensor([0.05, 0.1, 0.0, 0.08])  # per example, one of them 0


def make_classifier(train=False, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5),
    )
    classifier = BoundedClassifier(model, torch.rand(2, 1, 8, 8), device="cpu", mean=[0.4], std=[0.3])
    return classifier.train(train)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 8, 8, generator=gen), torch.tensor([0, 3, 1, 4])


def run(method, classifier, x, y, eps=EPS, progress=1.0, seed=7):
    torch.manual_seed(seed)  # the attack's random start
    return method(classifier, x, y, eps, progress)


def sample_box(x_low, x_high, count=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        corner = torch.rand(x_low.shape, generator=gen) < 0.5
        inside = x_low + (x_high - x_low) * torch.rand(x_low.shape, generator=gen)
        yield torch.where(torch.rand(x_low.shape, generator=gen) < 0.5, torch.where(corner, x_high, x_low), inside)


def lowest_sampled_margins(classifier, x_low, x_high, y):
    with torch.no_grad():
        return torch.stack([logit_margins(classifier(p), y) for p in sample_box(x_low, x_high)]).min(0).values


# --- the registry and its checks -------------------------------------------------------------------------------

def test_registry_builds_every_method_and_refuses_bad_options():
    assert set(TRAINING_METHODS) == {"IBP", "CROWN-IBP", "SABR", "CC-IBP", "MTL-IBP"}
    for name in TRAINING_METHODS:
        assert build_method(name).name == name
    with pytest.raises(ValueError, match=r"bad value method='PGD': one of \['IBP', 'CROWN-IBP'"):
        build_method("PGD")
    with pytest.raises(ValueError, match=r"bad value alpha_start=0.5: not an option of training method SABR; its "
                                         r"options: \['lambda_start', 'lambda_end', 'attack'\]"):
        build_method("SABR", alpha_start=0.5)
    with pytest.raises(ValueError, match=r"bad value lambda_start=1.5: a number in \[0, 1\]"):
        build_method("SABR", lambda_start=1.5)
    with pytest.raises(ValueError, match="bad value attack.iterations=3: no such attack option"):
        build_method("CC-IBP", attack={"iterations": 3})
    with pytest.raises(ValueError, match="bad value attack.restarts=0: an integer >= 1"):
        build_method("MTL-IBP", attack={"restarts": 0})
    for bad in (0, -2.1, float("nan"), "2", True):
        with pytest.raises(ValueError, match=r"bad value attack.eps_scale=" + re.escape(repr(bad)) + ": a number > 0"):
            build_method("CC-IBP", attack={"eps_scale": bad})
    # SABR's small box lives inside each example's eps_i ball, so its attack may not search a larger one.
    with pytest.raises(ValueError, match=r"bad value attack.eps_scale=2.1: 1 for SABR"):
        build_method("SABR", attack={"eps_scale": 2.1})
    assert build_method("SABR", attack={"eps_scale": 1.0}).attack.eps_scale == 1.0


def test_coefficients_ramp_with_the_eps_ramp():
    method = build_method("CC-IBP", alpha_start=0.2, alpha_end=0.6)
    assert method.coefficients(0.0) == {"alpha": 0.2}
    assert method.coefficients(0.5)["alpha"] == pytest.approx(0.4)
    assert build_method("SABR", lambda_start=0.3).coefficients(0.7) == {"sabr_lambda": 0.3}  # no end: constant
    assert build_method("CROWN-IBP", beta_start=1.0, beta_end=0.0).coefficients(0.25) == {"beta": 0.75}


# --- IBP and CROWN-IBP: the same numbers as the direct bound call of main's loop -----------------------------------

@pytest.mark.parametrize("name, beta_range, progress", [("IBP", None, 0.4), ("CROWN-IBP", (1.0, 0.0), 0.3)])
def test_ibp_and_crown_ibp_steps_equal_the_direct_certify_step(batch, name, beta_range, progress):
    """Loss, margins and every parameter gradient, bit for bit, against main's ``classifier.certify`` step."""
    x, y = batch
    options = {} if beta_range is None else dict(beta_start=beta_range[0], beta_end=beta_range[1])
    method = build_method(name, **options)
    results = []
    for path in ("direct", "method"):
        classifier = make_classifier(train=True)
        criterion = WeightedRobustLoss(gamma=5.0, alpha=0.1)
        if path == "direct":
            beta = None if beta_range is None else beta_range[0] + (beta_range[1] - beta_range[0]) * progress
            logits, lb = classifier.certify(x, y, EPS, method=name, beta=beta)
            out = criterion.compute(lb, logits, y, kappa=0.3)
        else:
            logits, lb, robust_losses = method(classifier, x, y, EPS, progress)
            assert robust_losses is None
            out = criterion.compute(lb, logits, y, kappa=0.3, robust_losses=robust_losses)
        loss = out.loss
        loss.backward()
        results.append((loss.detach(), lb.detach(), out.margins,
                        [p.grad.clone() for p in classifier.model.parameters()]))
    (loss_a, lb_a, m_a, g_a), (loss_b, lb_b, m_b, g_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(lb_a, lb_b) and torch.equal(m_a, m_b)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b))


# --- CC-IBP and MTL-IBP at a = 1 (IBP) and a = 0 (adversarial) ----------------------------------------------------

@pytest.mark.parametrize("name", ["CC-IBP", "MTL-IBP"])
def test_a_equal_1_is_ibp_loss_and_margins(batch, name):
    x, y = batch
    classifier = make_classifier(train=True)
    logits, ibp_lb, _ = build_method("IBP")(classifier, x, y, EPS)
    out = run(build_method(name, alpha_start=1.0, attack={"steps": 2}), classifier, x, y)
    assert torch.equal(out.logits, logits) and torch.equal(out.margin_lb, ibp_lb)
    criterion = WeightedRobustLoss(gamma=5.0, alpha=0.1)
    expected = criterion(ibp_lb, logits, y, kappa=0.2)
    assert torch.equal(criterion(out.margin_lb, out.logits, y, kappa=0.2, robust_losses=out.robust_losses), expected)


@pytest.mark.parametrize("name", ["CC-IBP", "MTL-IBP"])
def test_a_equal_0_is_the_adversarial_loss_and_margins(batch, name):
    x, y = batch
    classifier = make_classifier(train=False)
    attack = {"steps": 3, "restarts": 2}
    torch.manual_seed(7)
    x_adv = adversarial_point(classifier, x, y, EPS, AttackSettings(**attack))
    adv_logits = classifier(x_adv)
    out = run(build_method(name, alpha_start=0.0, attack=attack), classifier, x, y)
    if name == "CC-IBP":
        assert torch.equal(out.margin_lb, logit_margins(adv_logits, y))
        losses = robust_cross_entropy(out.margin_lb)  # what WeightedRobustLoss trains on: CE at x_adv
    else:
        losses = out.robust_losses
        assert torch.equal(out.margin_lb, classifier.certify(x, y, EPS, "IBP").margin_lb)  # the certified part
    torch.testing.assert_close(losses, F.cross_entropy(adv_logits, y, reduction="none"))
    # The attack did its job: the loss at x_adv is above the clean one (example 2 has eps 0: unchanged).
    clean = F.cross_entropy(classifier(x), y, reduction="none")
    assert (losses[[0, 1, 3]] > clean[[0, 1, 3]]).all() and torch.isclose(losses[2], clean[2])


def test_cc_ibp_margins_lie_between_ibp_and_the_adversarial_ones(batch):
    x, y = batch
    classifier = make_classifier(train=False)
    attack = {"steps": 3}
    out = run(build_method("CC-IBP", alpha_start=0.3, attack=attack), classifier, x, y)
    torch.manual_seed(7)
    adv = logit_margins(classifier(adversarial_point(classifier, x, y, EPS, AttackSettings(**attack))), y)
    ibp = classifier.certify(x, y, EPS, "IBP").margin_lb
    torch.testing.assert_close(out.margin_lb, 0.7 * adv + 0.3 * ibp)
    assert (ibp <= out.margin_lb + 1e-6).all() and (out.margin_lb <= adv + 1e-6).all()


# --- SABR -----------------------------------------------------------------------------------------------------

def test_small_box_by_hand():
    low, high = torch.full((3,), 0.2), torch.full((3,), 0.6)
    box_low, box_high = small_box(torch.tensor([0.55, 0.3, 0.45]), low, high, 0.5)
    torch.testing.assert_close(box_low, torch.tensor([0.4, 0.2, 0.35]))  # slid in at the top, the bottom, centred
    torch.testing.assert_close(box_high, torch.tensor([0.6, 0.4, 0.55]))
    full = small_box(torch.tensor([0.55, 0.3, 0.45]), low, high, 1.0)
    assert torch.equal(full[0], low) and torch.equal(full[1], high)


def test_sabr_with_lambda_1_and_no_attack_is_ibp(batch):
    x, y = batch
    classifier = make_classifier(train=True)
    ibp = build_method("IBP")(classifier, x, y, EPS)
    sabr = run(build_method("SABR", lambda_start=1.0, attack={"steps": 0}), classifier, x, y)
    assert torch.equal(sabr.logits, ibp.logits) and torch.equal(sabr.margin_lb, ibp.margin_lb)


def test_sabr_small_box_lives_in_each_examples_own_ball_and_its_bounds_are_sound_there(batch):
    x, y = batch
    classifier = make_classifier(train=False)
    attack = AttackSettings(steps=4)
    torch.manual_seed(7)
    x_adv = adversarial_point(classifier, x, y, EPS, attack)
    ball_low, ball_high = classifier.input_box(x, EPS)
    box_low, box_high = small_box(x_adv, ball_low, ball_high, 0.4)
    assert (box_low >= ball_low).all() and (box_high <= ball_high).all()
    torch.testing.assert_close(box_high - box_low, 0.4 * (ball_high - ball_low))
    assert torch.equal(box_low[2], x[2]) and torch.equal(box_high[2], x[2])  # eps_i = 0: a point
    out = run(build_method("SABR", lambda_start=0.4, attack={"steps": 4}), classifier, x, y)
    assert (out.margin_lb <= lowest_sampled_margins(classifier, box_low, box_high, y) + 1e-5).all()
    # A smaller box than the ball: tighter than IBP over the ball.
    assert (out.margin_lb >= classifier.certify(x, y, EPS, "IBP").margin_lb - 1e-5).all()


@pytest.mark.parametrize("name", ["IBP", "CROWN-IBP", "CC-IBP", "MTL-IBP"])
def test_certified_parts_are_sound_in_the_eps_ball(batch, name):
    """IBP, CROWN-IBP and the IBP part of CC-IBP (alpha 1) / MTL-IBP bound every margin sampled in the ball."""
    x, y = batch
    classifier = make_classifier(train=False)
    options = {"alpha_start": 1.0} if name in ("CC-IBP", "MTL-IBP") else {}
    out = run(build_method(name, **options), classifier, x, y)
    found = lowest_sampled_margins(classifier, *classifier.input_box(x, EPS), y)
    assert (out.margin_lb <= found + 1e-5).all()


# --- the shared PGD attack --------------------------------------------------------------------------------------

def test_pgd_stays_in_each_examples_ball_and_zero_steps_is_the_clean_point(batch):
    x, y = batch
    classifier = make_classifier(train=False)
    attack = pgd(classifier, x, y, EPS, steps=5, restarts=2, step_size=0.5)
    gap = (attack.x_adv - x).abs().flatten(1).max(1).values
    assert (gap <= EPS + 1e-6).all() and gap[2] == 0
    assert attack.x_adv.min() >= 0 and attack.x_adv.max() <= 1
    assert torch.equal(pgd(classifier, x, y, EPS, steps=0).x_adv, x)
    # Evaluation's view: a float eps, the clean misclassifications included.
    clean_wrong = classifier(x).argmax(1) != y
    fooled = pgd_attack(classifier, x, y, 0.1, steps=5)
    assert fooled.dtype == torch.bool and (fooled >= clean_wrong).all()
    with pytest.raises(ValueError, match="restarts >= 1"):
        pgd(classifier, x, y, EPS, restarts=0)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_eps_scale_scales_the_attack_radius_and_its_step(batch, scale):
    x, y = batch
    classifier = make_classifier(train=True)
    # A one-step attack of 10 x the radius lands on a corner of the attack ball (clamped to the pixel range).
    settings = AttackSettings(steps=1, step_size=10.0, eps_scale=scale)
    torch.manual_seed(5)
    x_adv = adversarial_point(classifier, x, y, EPS, settings)
    gap = (x_adv - x).abs().flatten(1).max(1).values
    assert (gap <= scale * EPS + 1e-6).all() and gap[2] == 0
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    hit = EPS > 0
    assert (gap[hit] >= scale * EPS[hit] - 1e-6).all()  # reaches the attack ball's edge: beyond eps when scale 2
    # The same as the package's one PGD over radius scale * eps_i, the step size being a multiple of that radius.
    torch.manual_seed(5)
    direct = pgd(classifier.eval(), x, y, scale * EPS, steps=1, step_size=10.0).x_adv
    assert torch.equal(x_adv, direct)
    torch.manual_seed(5)
    small_steps = adversarial_point(classifier, x, y, EPS, AttackSettings(steps=3, step_size=0.25, eps_scale=scale))
    torch.manual_seed(5)
    assert torch.equal(small_steps, pgd(classifier, x, y, scale * EPS, steps=3, step_size=0.25).x_adv)


def test_pgd_keeps_the_worst_restart_per_example(batch):
    x, y = batch
    classifier = make_classifier(train=False)
    torch.manual_seed(3)
    one = F.cross_entropy(classifier(pgd(classifier, x, y, EPS, steps=2, restarts=1).x_adv), y, reduction="none")
    torch.manual_seed(3)  # the same first restart, then three more
    four = F.cross_entropy(classifier(pgd(classifier, x, y, EPS, steps=2, restarts=4).x_adv), y, reduction="none")
    assert (four >= one - 1e-6).all()


# --- WeightedRobustLoss with per-example losses (MTL-IBP) ------------------------------------------------------------

def test_weighted_loss_weights_given_per_example_losses_by_the_margins_of_lb():
    lb = torch.tensor([[0.5, -1.0], [2.0, 1.0], [-0.2, 0.3]])
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    criterion = WeightedRobustLoss(gamma=2.0, alpha=0.1)
    assert torch.equal(criterion(lb, robust_losses=robust_cross_entropy(lb)), criterion(lb))
    out = criterion.compute(lb, robust_losses=losses)
    loss = out.loss
    weights = criterion.weights(out.margins)
    torch.testing.assert_close(loss, (weights * losses).sum() / weights.sum())
    loss.backward()
    torch.testing.assert_close(losses.grad, weights / weights.sum())
    with pytest.raises(ValueError, match=r"robust_losses must be \(3,\)"):
        criterion(lb, robust_losses=torch.ones(2))
