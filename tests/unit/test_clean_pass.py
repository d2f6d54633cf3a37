"""The clean pass without autograd or not at all (kappa 0): same bounds, same gradients, and refused where it would
not be."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lirpa_reweight import BoundedClassifier
from lirpa_reweight.core.margins import robust_cross_entropy
from lirpa_reweight.models import MODELS, build_model

SHAPE = (1, 12, 12)


def classifier_of(model, shape=SHAPE):
    model.train()
    return BoundedClassifier(model, torch.rand((2,) + shape), device="cpu", mean=[0.25], std=[0.5])


class ScaledWeight(nn.Module):
    """A layer whose weight reaches the graph through an operation (``2 * w``): a node that does not depend on the
    input, whose interval auto_LiRPA takes from the forward pass; without autograd there, ``w`` gets no gradient."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 144) * 0.1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(F.relu(x.flatten(1) @ (2 * self.weight).t()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_zoo_is_probed_as_expected(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28) if name.startswith(("dm_", "cnn_7")) else SHAPE, 10)
    shape = (1, 28, 28) if name.startswith(("dm_", "cnn_7")) else SHAPE
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert classifier_of(model, shape).clean_pass_detachable is (not has_batch_norm)


def test_a_weight_reached_through_an_operation_is_refused_by_the_probe():
    torch.manual_seed(0)
    classifier = classifier_of(ScaledWeight())
    assert classifier.clean_pass_detachable is False
    # and that refusal is what keeps the gradient: without autograd in the clean pass it is lost
    x, y = torch.rand((4,) + SHAPE), torch.tensor([0, 1, 2, 3])
    classifier._clean_pass_detachable = True
    gradients = []
    for clean in ("grad", "no_grad"):
        _, lb = classifier.certify(x, y, 0.05, "IBP", clean=clean)
        gradients.append(torch.autograd.grad(lb.sum(), [classifier.model.weight], allow_unused=True)[0])
    assert gradients[0] is not None and gradients[0].abs().sum() > 0
    assert gradients[1] is None  # its only path ran without autograd: nothing would train it


def test_the_probe_leaves_no_gradient_and_no_random_draw():
    torch.manual_seed(0)
    classifier = classifier_of(build_model("cnn_4layer", SHAPE, 10))
    state = torch.get_rng_state()
    assert classifier.clean_pass_detachable
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in classifier.parameters())


def test_the_probe_after_an_eval_mode_pass_still_compares_gradients():
    # auto_LiRPA's parameter nodes switch requires_grad off in an eval-mode forward (SABR's attack runs one)
    # and on again in the next train-mode pass; the probe must see the gradients all the same.
    torch.manual_seed(0)
    classifier = classifier_of(ScaledWeight())
    classifier.eval()
    classifier(torch.rand((3,) + SHAPE))
    assert not any(p.requires_grad for p in classifier.parameters())
    assert classifier.clean_pass_detachable is False  # refused by its gradients, as in train mode
    assert classifier.training is False  # the caller's mode is put back


@pytest.mark.parametrize("method,beta", [("IBP", None), ("CROWN-IBP", 0.5), ("CROWN-IBP", None)])
def test_bounds_and_gradients_are_bit_identical_without_autograd_or_without_the_clean_pass(method, beta):
    torch.manual_seed(0)
    classifier = classifier_of(build_model("cnn_4layer", SHAPE, 10))
    x, y = torch.rand((16,) + SHAPE), torch.randint(10, (16,))
    eps = torch.linspace(0.0, 0.08, 16)
    results = {}
    for clean in ("grad", "no_grad", "none"):
        classifier(torch.rand((5,) + SHAPE))  # another batch's forward values: a stale read would show
        logits, lb = classifier.certify(x, y, eps, method, beta, clean=clean)
        grads = torch.autograd.grad(robust_cross_entropy(lb).mean(), list(classifier.parameters()))
        results[clean] = (logits, lb, grads)
    logits, lb, grads = results["grad"]
    assert logits.requires_grad and not results["no_grad"][0].requires_grad
    assert torch.equal(logits.detach(), results["no_grad"][0]) and results["none"][0] is None
    for other in ("no_grad", "none"):
        assert torch.equal(lb, results[other][1])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[other][2]))


@pytest.mark.parametrize("clean", ["no_grad", "none"])
def test_batch_norm_keeps_its_clean_pass_recorded(clean):
    torch.manual_seed(0)
    classifier = classifier_of(build_model("cnn_4layer_bn", SHAPE, 10))
    logits, _ = classifier.certify(torch.rand((8,) + SHAPE), torch.randint(10, (8,)), 0.05, clean=clean)
    assert logits.requires_grad  # train-mode BatchNorm bounds read the pass's batch statistics


def test_an_unknown_clean_pass_is_refused_naming_it():
    classifier = classifier_of(build_model("cnn_4layer", SHAPE, 10))
    with pytest.raises(ValueError, match=r"clean.*'skip'.*'grad' or 'no_grad' or 'none'"):
        classifier.certify(torch.rand((2,) + SHAPE), torch.tensor([0, 1]), 0.05, clean="skip")


def test_the_meter_takes_clean_metrics_from_the_batches_that_brought_logits():
    from lirpa_reweight.training.trainer import EpochMeter

    meter = EpochMeter("cpu")
    y = torch.tensor([0, 1])
    measured = torch.tensor([[2.0, 0.0], [3.0, 0.0]])  # argmax 0, 0: one error of two
    meter.add(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(2.0), measured, torch.tensor([True, False]), y,
              torch.tensor([1.0, 1.0]))
    meter.add(torch.tensor(3.0), None, torch.tensor(4.0), None, torch.tensor([True, True]), y,
              torch.tensor([2.0, 2.0]))
    stats = meter.read()
    assert stats["clean_error"] == 0.5 and stats["clean_loss"] == 0.5  # the first batch's alone
    assert stats["loss"] == 2.0 and stats["robust_loss"] == 3.0  # over all four examples
    assert stats["verified_error"] == 0.25 and stats["mean_weight"] == 1.5


TRAIN = ["data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=48", "data.num_test=16",
         "trainer.batch_size=12", "trainer.device=cpu", "trainer.progress=false", "schedule.eps_train=0.05",
         "schedule.eps_eval=0.03", "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'", "run_dir=unused",
         "reweight=on", "autoeps=on", "schedule.kappa_start=0", "schedule.kappa_end=0"]


def run_kappa_0(overrides, compose, detachable=None):
    """Two epochs at kappa 0; the clean passes the steps asked for, the logged numbers, parameters and offsets.
    ``detachable``: what the probe is taken to have found; None runs the probe."""
    from lirpa_reweight.training import build

    spec = build.read_config(compose([*TRAIN, *overrides]))
    run = build.build_run(spec, torch.device("cpu"))
    trainer = build.build_trainer(spec, run)
    classifier = trainer.classifier
    if detachable is not None:
        classifier._clean_pass_detachable = detachable
    certify, asked = classifier.certify, []

    def spied(*args, **kwargs):  # what each step asked for, and whether the clean pass then ran
        batch = certify(*args, **kwargs)
        asked.append(kwargs["clean"] + (" (skipped)" if batch.logits is None else ""))
        return batch
    classifier.certify = spied
    stats = [trainer.train_epoch(run.epoch_loader(epoch), epoch) for epoch in (1, 2)]
    return asked, stats, [p.detach().clone() for p in classifier.parameters()], trainer.autoeps.state_dict()["offsets"]


@pytest.mark.parametrize("overrides", [["bound=ibp"], ["bound=crown_ibp"], ["bound=sabr"],
                                       ["bound=ibp", "regularizer=shi"]])
def test_kappa_0_training_is_the_same_without_autograd_in_the_clean_pass(overrides, compose):
    every_batch = [*overrides, "trainer.clean_metric_every=1"]
    asked, stats, params, offsets = run_kappa_0(every_batch, compose, detachable=False)
    asked_detached, stats_detached, params_detached, offsets_detached = run_kappa_0(every_batch, compose, True)
    assert asked == asked_detached == ["no_grad"] * 8  # 4 batches x 2 epochs: the logits feed only the meter
    assert stats == stats_detached  # losses, clean and verified error, weights, eps: every logged number
    assert all(torch.equal(a, b) for a, b in zip(params, params_detached))
    assert torch.equal(offsets, offsets_detached) and offsets.abs().sum() > 0


@pytest.mark.parametrize("bound", ["ibp", "crown_ibp", "sabr"])
def test_skipping_the_clean_pass_changes_only_the_clean_metrics_sample(bound, compose):
    # the probe decides (SABR: after its eval-mode attack), and every training number but the clean sample holds
    _, stats, params, offsets = run_kappa_0([f"bound={bound}", "trainer.clean_metric_every=1"], compose, False)
    asked, stats_every_3, params_every_3, offsets_every_3 = run_kappa_0(
        [f"bound={bound}", "trainer.clean_metric_every=3"], compose)
    # batches 0 and 3 of each epoch are measured; the others skip the pass (the probe found it sound)
    assert asked == ["no_grad", "none (skipped)", "none (skipped)", "no_grad"] * 2
    assert all(torch.equal(a, b) for a, b in zip(params, params_every_3))
    assert torch.equal(offsets, offsets_every_3)
    for epoch, epoch_every_3 in zip(stats, stats_every_3):
        assert {k: v for k, v in epoch.items() if not k.startswith("clean_")} == \
               {k: v for k, v in epoch_every_3.items() if not k.startswith("clean_")}
        assert 0.0 <= epoch_every_3["clean_error"] <= 1.0 and epoch_every_3["clean_loss"] > 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_the_trainer_refuses_a_bad_clean_metric_interval_naming_it(bad):
    from lirpa_reweight.training.trainer import Trainer

    with pytest.raises(ValueError, match=rf"clean_metric_every.*{bad}.*an integer >= 1"):
        Trainer(None, None, None, None, None, eps_train=0.1, clean_metric_every=bad)
