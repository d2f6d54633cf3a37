"""alpha-beta-CROWN as the cascade's last stage, on small constructed networks (CPU).

It is in no package registry (docs/verification.md says how to install it): these tests skip where it is not
importable, e.g. on the PyPI line CI runs.
"""
import importlib.util

import pytest
import torch
from torch import nn

from lirpa_reweight.core.bounds import BoundedClassifier
from lirpa_reweight.evaluation import robustness, stages
from lirpa_reweight.evaluation.plan import AbcrownOptions, AttackOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("abcrown") is None,
                                reason="alpha-beta-CROWN is not importable (installed from GitHub, not a registry; "
                                       "see docs/verification.md)")


def twin_relu_classifier(bias=0.1):
    """z_0 - z_1 = bias - relu(relu(x - .5) - relu(x - .5)) = bias on [0, 1]: true everywhere, but IBP (and the
    linear relaxations) treat the two equal ReLUs as independent and lose it; splitting x - .5 at 0 makes both
    pieces exact, so branch and bound verifies."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [1.0]]))
        model[1].bias.copy_(torch.tensor([-0.5, -0.5]))
        model[3].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[3].bias.zero_()
        model[5].weight.copy_(torch.tensor([[-1.0], [0.0]]))
        model[5].bias.copy_(torch.tensor([bias, 0.0]))
    return BoundedClassifier(model, torch.zeros(1, 1, 1, 1), device="cpu")


def threshold_classifier(threshold=0.4):
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, threshold]))
    return BoundedClassifier(model, torch.zeros(1, 1, 1, 1), device="cpu")


ALL = ["IBP", "CROWN-IBP", "CROWN", "alpha-CROWN", "abcrown"]


def test_ibp_fails_where_branch_and_bound_verifies():
    classifier = twin_relu_classifier()
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    for method in ("IBP", "CROWN-IBP", "CROWN", "alpha-CROWN"):
        assert not bool(stages.bound_verified(classifier, x, y, 0.5, method)[0]), method
    records = robustness.cascade(classifier, x, y, [0], 0.5, robustness.make_plan(ALL, AttackOptions(steps=20)), {})
    assert records[0]["outcome"] == "verified" and records[0]["stage"] == "abcrown", records


def test_a_known_counterexample_is_returned_by_abcrown_and_rechecked():
    classifier = threshold_classifier(0.4)
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    plan = robustness.make_plan(["IBP", "abcrown"], AttackOptions(steps=0))  # our attack off: abcrown must find it
    records = robustness.cascade(classifier, x, y, [0], 0.2, plan, {})
    assert records[0]["outcome"] == "falsified" and records[0]["stage"] == "abcrown", records
    assert records[0]["abcrown_status"].startswith("unsafe") and -0.1 - 1e-6 <= records[0]["margin"] < 0


def random_mlp(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    return BoundedClassifier(model, torch.zeros(1, 1, 4, 4), device="cpu")


def test_nothing_abcrown_verifies_is_broken_by_autoattack_pgd_or_sampling():
    classifier = random_mlp(0)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(12, 1, 4, 4, generator=gen)
    y = classifier(x).argmax(1)
    eps = 0.06
    plan = robustness.make_plan(["abcrown"], AttackOptions(steps=0), AbcrownOptions(timeout=20))
    records = robustness.cascade(classifier, x, y, list(range(12)), eps, plan, {})
    verified = torch.tensor([r["outcome"] == "verified" for r in records])
    assert verified.any() and not verified.all(), records  # the radius leaves both outcomes
    xv, yv = x[verified], y[verified]
    strong = stages.pgd_found(classifier, xv, yv, eps, list(range(len(yv))), AttackOptions(steps=200, restarts=10))
    assert not strong.fooled.any()
    if importlib.util.find_spec("torchattacks") is not None:
        assert not stages.autoattack_found(classifier, xv, yv, eps, AttackOptions()).fooled.any()
    low, high = classifier.input_box(xv, eps)
    for _ in range(50):
        point = low + (high - low) * torch.rand(low.shape, generator=gen)
        assert (classifier(point).argmax(1) == yv).all()
    for r in records:  # what it falsified is confirmed by the forward pass (the cascade re-checked it)
        if r["outcome"] == "falsified":
            assert r["margin"] < 0


def test_a_timeout_is_unknown_never_verified():
    classifier = twin_relu_classifier()
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    # No time for branching: alpha-beta-CROWN's incomplete stage cannot verify this property, so it is unknown.
    options = AbcrownOptions(timeout=1e-3, config={"bab": {"override_timeout": 1e-3}})
    records = robustness.cascade(classifier, x, y, [0], 0.5,
                                 robustness.make_plan(["abcrown"], AttackOptions(steps=0), options), {})
    assert records[0]["outcome"] == "unknown" and records[0]["unknown_reason"] == "timeout", records
