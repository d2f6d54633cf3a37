"""WeightedRobustLoss against numbers written from eq. 2, 6, 7 and 8 of the paper, and its input checks."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from lirpa_reweight.core.margins import worst_case_logits
from lirpa_reweight.core.reweight import WeightedRobustLoss


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


# Two examples, three classes. Worst-case logits (true class first): [0, -2, -1] and [0, 1, -0.5].
LB = [[2.0, 1.0], [-1.0, 0.5]]
WORST = [[0.0, -2.0, -1.0], [0.0, 1.0, -0.5]]


def hand_margins():
    margins = []
    for row in WORST:
        p = softmax(row)
        margins.append(p[0] - max(p[1:]))  # eq. 6
    return margins


def hand_robust_ce():
    return [-math.log(softmax(row)[0]) for row in WORST]


def test_margins_weights_and_loss_match_hand_computation():
    gamma, alpha = 5.0, 0.1
    margins = hand_margins()
    # The first example is certified (all lb > 0), the second is not.
    assert margins[0] > 0 > margins[1]
    weights = [math.exp(-gamma * abs(m)) + alpha for m in margins]  # eq. 7
    ce = hand_robust_ce()
    expected = sum(w * c for w, c in zip(weights, ce)) / sum(weights)  # eq. 8 with kappa = 0

    loss_fn = WeightedRobustLoss(gamma=gamma, alpha=alpha)
    out = loss_fn.compute(torch.tensor(LB))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn(torch.tensor(LB)).item() == out.loss.item()  # calling it returns the same loss
    assert out.margins.tolist() == pytest.approx(margins, rel=1e-6)
    assert out.weights.tolist() == pytest.approx(weights, rel=1e-6)
    assert out.robust_losses.tolist() == pytest.approx(ce, rel=1e-6) and int(out.examples) == len(LB)
    assert not out.margins.requires_grad and not out.weights.requires_grad


def test_kappa_mixes_the_clean_loss_as_in_eq_8():
    gamma, alpha, kappa = 2.0, 0.3, 0.25
    clean_logits = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    y = [0, 2]
    clean = sum(-math.log(softmax(row)[label]) for row, label in zip(clean_logits, y)) / 2
    weights = [math.exp(-gamma * abs(m)) + alpha for m in hand_margins()]
    robust = sum(w * c for w, c in zip(weights, hand_robust_ce())) / sum(weights)
    expected = kappa * clean + (1 - kappa) * robust

    loss = WeightedRobustLoss(gamma, alpha)(torch.tensor(LB), torch.tensor(clean_logits), torch.tensor(y), kappa)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def random_bounds(batch=16, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lb = torch.randn(batch, classes - 1, generator=gen) * 3
    y = torch.randint(classes, (batch,), generator=gen)
    logits = torch.randn(batch, classes, generator=gen)
    return lb, y, logits


def test_gamma_zero_is_auto_lirpa_examples_robust_loss():
    lb, y, _ = random_bounds()
    # As in auto_LiRPA's examples/vision/simple_training.py.
    lb_padded = torch.cat((torch.zeros(size=(lb.size(0), 1), dtype=lb.dtype), lb), dim=1)
    fake_labels = torch.zeros(size=(lb.size(0),), dtype=torch.int64)
    baseline = torch.nn.CrossEntropyLoss()(-lb_padded, fake_labels)
    # The same loss with the worst-case logits in label order (eq. 2).
    in_label_order = F.cross_entropy(worst_case_logits(lb, y), y)

    for alpha in (0.1, 0.0, 2.0):
        loss = WeightedRobustLoss(gamma=0.0, alpha=alpha)(lb)
        torch.testing.assert_close(loss, baseline, rtol=1e-6, atol=0)
    torch.testing.assert_close(in_label_order, baseline, rtol=1e-6, atol=0)


def test_gamma_zero_gradient_matches_the_baseline():
    lb, _, _ = random_bounds(seed=1)
    lb_a, lb_b = lb.clone().requires_grad_(), lb.clone().requires_grad_()
    WeightedRobustLoss(gamma=0.0)(lb_a).backward()
    lb_padded = torch.cat((torch.zeros(lb.size(0), 1), lb_b), dim=1)
    torch.nn.CrossEntropyLoss()(-lb_padded, torch.zeros(lb.size(0), dtype=torch.long)).backward()
    torch.testing.assert_close(lb_a.grad, lb_b.grad, rtol=1e-5, atol=1e-7)


def test_kappa_one_is_the_clean_loss():
    lb, y, logits = random_bounds(seed=2)
    loss = WeightedRobustLoss()(lb, logits, y, kappa=1.0)
    assert torch.equal(loss, F.cross_entropy(logits, y))


def test_weights_carry_no_gradient():
    lb, _, _ = random_bounds(seed=3)
    lb = lb.requires_grad_()
    loss_fn = WeightedRobustLoss(gamma=5.0, alpha=0.1)
    out = loss_fn.compute(lb)
    out.loss.backward()
    # With the weights held constant, d loss / d lb_i = share_i * d CE_i / d lb_i.
    share = (out.weights / out.weights.sum()).detach()
    lb_ref = lb.detach().clone().requires_grad_()
    padded = torch.cat([torch.zeros(lb.size(0), 1), -lb_ref], dim=1)
    ce = F.cross_entropy(padded, torch.zeros(lb.size(0), dtype=torch.long), reduction="none")
    (share * ce).sum().backward()
    torch.testing.assert_close(lb.grad, lb_ref.grad, rtol=1e-5, atol=1e-8)


def test_alpha_zero_with_large_gamma_stays_finite():
    # Example 0 sits on the boundary (margin 0: worst-case logits [0, 0, -5]); example 1 is far from it.
    lb = torch.tensor([[0.0, 5.0], [8.0, 9.0]])
    loss = WeightedRobustLoss(gamma=1000.0, alpha=0.0)(lb)
    # exp(-1000 * |margin|) underflows for example 1: all the weight goes to example 0.
    expected = -math.log(softmax([0.0, 0.0, -5.0])[0])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_state_dict_round_trip():
    saved = WeightedRobustLoss(gamma=2.5, alpha=0.05).state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    restored = WeightedRobustLoss()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert (restored.gamma, restored.alpha) == (2.5, 0.05)
    lb, _, _ = random_bounds(seed=4)
    assert torch.equal(restored(lb), WeightedRobustLoss(gamma=2.5, alpha=0.05)(lb))


@pytest.mark.parametrize("kwargs, message", [
    ({"gamma": -1.0}, "bad value gamma=-1.0: a finite number >= 0"),
    ({"alpha": -0.1}, "bad value alpha=-0.1: a finite number >= 0"),
    ({"gamma": float("nan")}, "bad value gamma=nan: a finite number >= 0"),
])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightedRobustLoss(**kwargs)


def test_bad_state_dict_values_are_refused():
    state = WeightedRobustLoss().state_dict()
    state["_extra_state"] = {"gamma": -3.0, "alpha": 0.1}
    with pytest.raises(ValueError, match="bad value gamma=-3.0: a finite number >= 0"):
        WeightedRobustLoss().load_state_dict(state)


@pytest.mark.parametrize("kappa", [-0.1, 1.5])
def test_kappa_outside_unit_interval(kappa):
    lb, y, logits = random_bounds(batch=3)
    with pytest.raises(ValueError, match=rf"bad value kappa={kappa}: a number in \[0, 1\]"):
        WeightedRobustLoss()(lb, logits, y, kappa)


@pytest.mark.parametrize("shape", [(9,), (2, 3, 9), (0, 9)])
def test_lb_must_be_two_dimensional(shape):
    with pytest.raises(ValueError, match=r"lb must be a non-empty \(B, C-1\) tensor"):
        WeightedRobustLoss()(torch.zeros(shape))


def test_kappa_needs_clean_logits_and_labels():
    lb, y, logits = random_bounds(batch=3)
    with pytest.raises(ValueError, match="give clean_logits and y"):
        WeightedRobustLoss()(lb, kappa=0.5)
    with pytest.raises(ValueError, match="give clean_logits and y"):
        WeightedRobustLoss()(lb, logits, kappa=0.5)


def test_batch_sizes_must_agree():
    lb, y, logits = random_bounds(batch=4)
    with pytest.raises(ValueError, match=r"clean_logits must be \(4, 10\).*got \(3, 10\)"):
        WeightedRobustLoss()(lb, logits[:3], y, kappa=0.5)
    with pytest.raises(ValueError, match=r"y must be \(4,\).*got \(5,\)"):
        WeightedRobustLoss()(lb, logits, torch.zeros(5, dtype=torch.long), kappa=0.5)
    with pytest.raises(ValueError, match="integer class labels"):
        WeightedRobustLoss()(lb, logits, y.float(), kappa=0.5)


def test_non_finite_bounds_name_count_and_positions():
    lb, _, _ = random_bounds(batch=6)
    lb[1, 2] = float("nan")
    lb[4, 0] = float("inf")
    lb[4, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 6 examples, at batch positions \[1, 4\]"):
        WeightedRobustLoss()(lb)


def test_deferred_checks_count_on_the_device_and_raise_from_check():
    from lirpa_reweight.core.reweight import WeightedRobustLoss
    loss = WeightedRobustLoss(sync_checks=False)
    lb = torch.tensor([[0.1, float("inf")], [0.2, 0.3]])
    loss(lb)  # no error yet: counted, not read
    loss(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"epoch 3: lb had NaN or inf in 2 value\(s\)"):
        loss.check("epoch 3")
    loss.check("epoch 4")  # reported once
    with pytest.raises(ValueError, match="lb has NaN or inf"):
        WeightedRobustLoss()(lb)  # the default still raises at once
