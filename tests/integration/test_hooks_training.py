"""Both hooks in a real training loop on BoundedClassifier bounds (IBP and CROWN-IBP), and the drop-in example."""
import importlib.util
import math

import pytest
import torch
from torch import nn

from support import ROOT

import lirpa_reweight  # noqa: F401  (patches auto_LiRPA before it is imported)
from auto_LiRPA.eps_scheduler import FixedScheduler
from lirpa_reweight.core.bounds import BoundedClassifier
from lirpa_reweight.core.margins import bound_margin
from lirpa_reweight.core.autoeps import AutoEpsScheduler
from lirpa_reweight.core.reweight import WeightedRobustLoss

NUM_CLASSES, NUM_EXAMPLES, SHAPE = 3, 96, (1, 4, 4)
EPS_BASE, MAXOFF = 0.1, 0.08
METHODS = [("IBP", None), ("CROWN-IBP", 0.5)]


def prototype_data(seed=0):
    """Each class is a fixed random image plus small noise: learnable, and robust at small eps."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = 0.2 + 0.6 * torch.rand((NUM_CLASSES,) + SHAPE, generator=gen)
    y = torch.arange(NUM_EXAMPLES) % NUM_CLASSES
    x = (prototypes[y] + 0.05 * torch.randn((NUM_EXAMPLES,) + SHAPE, generator=gen)).clamp(0, 1)
    return x, y


def classifier(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))
    return BoundedClassifier(model, torch.rand((2,) + SHAPE), device="cpu", mean=[0.5], std=[0.25])


@pytest.mark.parametrize("method, beta", METHODS)
def test_training_with_both_hooks_reduces_the_loss(method, beta):
    x, y = prototype_data()
    clf = classifier()
    scheduler = AutoEpsScheduler(FixedScheduler(EPS_BASE), NUM_EXAMPLES, MAXOFF, device="cpu")
    loss_fn = WeightedRobustLoss(gamma=5.0, alpha=0.1)
    optimizer = torch.optim.Adam(clf.parameters(), lr=0.01)

    def full_loss():
        with torch.no_grad():
            out = clf.certify(x, y, EPS_BASE, method, beta)
            return loss_fn(out.margin_lb, out.logits, y, kappa=0.5).item()

    before = full_loss()
    gen = torch.Generator().manual_seed(1)
    offsets_seen = 0.0  # the largest fraction of examples with an offset, over epochs
    for _ in range(10):  # epochs
        scheduler.train()
        scheduler.step_epoch()
        for indices in torch.randperm(NUM_EXAMPLES, generator=gen).split(32):
            scheduler.step_batch()
            eps = scheduler.eps(indices)
            out = clf.certify(x[indices], y[indices], eps, method, beta)
            weighted = loss_fn.compute(out.margin_lb, out.logits, y[indices], kappa=0.5)
            loss = weighted.loss
            # The margins the loss saw are eq. 6 of these bounds, at these per-example radii.
            torch.testing.assert_close(weighted.margins, bound_margin(out.margin_lb.detach()))
            scheduler.update(indices, weighted.margins)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        offsets_seen = max(offsets_seen, scheduler.stats()["fraction_offset"])
    after = full_loss()
    assert after < 0.6 * before, (before, after)
    # Auto eps was exercised: examples got offsets, and by the end only the uncertified ones keep one.
    assert offsets_seen > 0
    assert 0 < scheduler.stats()["fraction_offset"] < 1


@pytest.mark.parametrize("method, beta", METHODS)
def test_per_example_eps_reach_the_bounds(method, beta):
    x, y = prototype_data()
    x, y = x[:4], y[:4]
    clf = classifier().eval()
    scheduler = AutoEpsScheduler(FixedScheduler(EPS_BASE), NUM_EXAMPLES, MAXOFF, device="cpu")
    indices = torch.tensor([0, 1, 2, 3])
    # Example 0 gets the largest offset, example 2 half of it; 1 and 3 none.
    scheduler.update(indices, torch.tensor([-1.0, 0.3, -0.5, 0.0]))
    eps = scheduler.eps(indices)
    torch.testing.assert_close(eps, torch.tensor([EPS_BASE - MAXOFF, EPS_BASE, EPS_BASE - MAXOFF / 2, EPS_BASE]))

    lb_auto = clf.margin_lower_bounds(x, y, eps, method, beta)
    lb_base = clf.margin_lower_bounds(x, y, EPS_BASE, method, beta)
    # A smaller radius gives a larger (tighter) lower bound; untouched examples keep eps_base's bounds.
    assert (lb_auto[[0, 2]] > lb_base[[0, 2]]).all()
    torch.testing.assert_close(lb_auto[[1, 3]], lb_base[[1, 3]])
    # Row 0 is exactly what a scalar radius eps_base - maxoff gives.
    lb_small = clf.margin_lower_bounds(x, y, EPS_BASE - MAXOFF, method, beta)
    torch.testing.assert_close(lb_auto[0], lb_small[0])


EXAMPLE = ROOT / "examples" / "drop_in_auto_lirpa.py"


def marked_example(path):
    """The example script ``path`` as a module, after checking that few of its lines are marked as ours."""
    marked = [line for line in path.read_text().splitlines() if "  # lirpa_reweight" in line]
    assert 1 <= len(marked) <= 10, marked
    spec = importlib.util.spec_from_file_location(path.stem, path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_drop_in_example_runs_with_few_marked_lines():
    example = marked_example(EXAMPLE)
    # Epoch 1 natural, epoch 2 ramps (CROWN-IBP mixed with IBP), epochs 3-4 at full eps (IBP): every branch runs.
    stats = example.main(["--synthetic", "--steps", "8", "--num-epochs", "4", "--bound-type", "CROWN-IBP",
                          "--scheduler-name", "LinearScheduler", "--scheduler-opts", "start=2,length=1"])
    assert set(stats) == {"loss", "clean_err", "verified_err"}
    assert all(math.isfinite(v) for v in stats.values())


CIFAR_EXAMPLE = ROOT / "examples" / "cifar_crown_ibp_fused.py"


def test_cifar_fused_example_moves_offsets_and_spreads_weights():
    example = marked_example(CIFAR_EXAMPLE)
    # Epoch 1 natural, epochs 2-3 ramp (CROWN-IBP mixed with IBP through loss fusion).
    stats = example.main(["--synthetic", "--steps", "12", "--num-epochs", "3", "--scheduler-opts",
                          "start=2,length=2,mid=0.4"])
    assert stats["max_offset"] > 0 and stats["fraction_offset"] > 0  # Algorithm 1 read the fused margins
    # Eq. 7 told examples apart: its varying part exp(-gamma |m|) (the weight less the floor alpha = 0.1) spans a
    # factor above 2 (gamma 0 gives equal weights). Early in the ramp most fused margins sit near -1, so the weights
    # themselves stay near the floor; the floor is the same for every example.
    assert stats["weight_max"] - 0.1 > 2 * (stats["weight_min"] - 0.1)
    assert math.isfinite(stats["loss"]) and 0 <= stats["verified_err"] <= 1
    off = example.main(["--synthetic", "--steps", "12", "--num-epochs", "3", "--gamma", "0", "--maxoff", "0"])
    assert off["weight_max"] == off["weight_min"] and off["max_offset"] == 0
