"""Fast training (Shi et al. 2021) in the loop: the regulariser acts during the ramp only, gradient clipping,
and the fast recipes compose with the tactics and CROWN-IBP."""
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from support import compose_config

from lirpa_reweight.training import build
from lirpa_reweight.fast.regularizers import WarmupRegularizer
from lirpa_reweight.training.run import train

# Ramp over epochs 1-2 (linear), eps_train reached from epoch 3 on.
TINY = [
    "data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=128", "data.num_test=32",
    "trainer.batch_size=64", "trainer.val_examples=32", "trainer.progress=false", "trainer.epochs=3",
    "schedule.eps_train=0.05", "schedule.eps_eval=0.05",
    "schedule.eps_scheduler._target_=auto_LiRPA.eps_scheduler.LinearScheduler",
    "schedule.eps_scheduler.opt_str='start=1,length=2'", "eval.methods=[IBP]", "eval.pgd_steps=0",
    "model=cnn_4layer_bn", "model.init=ibp", "trainer.grad_clip=10",
]


def compose_cfg(*overrides):
    return compose_config(overrides)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Recording(WarmupRegularizer):
    """Records (eps, eps_max, value) of every call."""

    calls: list = []

    def __call__(self, bounded, eps, eps_max):
        value = super().__call__(bounded, eps, eps_max)
        Recording.calls.append((eps, eps_max, value.item()))
        return value


def test_regulariser_changes_the_loss_only_during_the_ramp(tmp_path, monkeypatch):
    Recording.calls = []
    monkeypatch.setattr(build, "WarmupRegularizer", Recording)
    # Stop after the ramp (epoch 2), then finish epoch 3 from the same checkpoint with and without it.
    shi = tmp_path / "shi"
    train(compose_cfg(*TINY, "regularizer=shi", f"run_dir={shi}", "trainer.stop_after_epochs=2"))
    ramp_calls = list(Recording.calls)
    # The first batch trains at eps 0 (no interval yet: weight 0); every later ramp batch gets the terms.
    assert ramp_calls[0] == (0.0, 0.05, 0.0) and len(ramp_calls) == 4
    assert all(0 < eps < eps_max and value > 0 for eps, eps_max, value in ramp_calls[1:])
    none = tmp_path / "none"
    shutil.copytree(shi, none)
    # The same weights, recorded as a run without the regulariser (a resume refuses a changed training key).
    state = torch.load(none / "last.pt", weights_only=False)
    state["config"]["regularizer"] = {"name": "none", "tol": 0.5, "lambda": 0.0}
    torch.save(state, none / "last.pt")
    Recording.calls = []
    train(compose_cfg(*TINY, "regularizer=shi", f"run_dir={shi}", "trainer.resume=true"))
    assert Recording.calls and all(eps == eps_max and value == 0.0 for eps, eps_max, value in Recording.calls)
    train(compose_cfg(*TINY, "regularizer=none", f"run_dir={none}", "trainer.resume=true"))
    after_shi, after_none = metrics(shi)[2], metrics(none)[2]
    assert after_shi["epoch"] == after_none["epoch"] == 3
    for key in ("loss", "robust_loss", "clean_error", "verified_error", "val_verified_error"):
        assert after_shi[key] == after_none[key], key
    assert torch.equal(torch.load(shi / "last.pt", weights_only=False)["model"]["0.weight"],
                       torch.load(none / "last.pt", weights_only=False)["model"]["0.weight"])

    # During the ramp, the same seed without the regulariser trains differently from the first step on.
    plain = tmp_path / "plain"
    train(compose_cfg(*TINY, "regularizer=none", f"run_dir={plain}", "trainer.stop_after_epochs=1"))
    assert metrics(plain)[0]["loss"] != metrics(shi)[0]["loss"]


def test_gradient_clipping_bounds_the_step(tmp_path, monkeypatch):
    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = original(parameters, max_norm, *args, **kwargs)
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        norms.append((max_norm, total.item(), clipped.item()))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train(compose_cfg(*TINY, "trainer.grad_clip=0.01", "trainer.epochs=1", f"run_dir={tmp_path}"))
    assert len(norms) == 2  # one per batch
    for max_norm, total, clipped in norms:
        assert max_norm == 0.01 and total > 0.01 and clipped == pytest.approx(0.01, rel=1e-3)


def resolved(*overrides):
    return compose_config(overrides, run_dir="unused", resolve=True)


@pytest.mark.parametrize("experiment", ["mnist_fast", "cifar_fast", "mnist_fast_quick"])
@pytest.mark.parametrize("extra", [[], ["reweight=on", "autoeps=on"], ["bound=crown_ibp"],
                                   ["reweight=on", "autoeps=on", "bound=crown_ibp"]])
def test_fast_recipes_compose_with_the_tactics_and_crown_ibp(experiment, extra):
    cfg = resolved(f"+experiment={experiment}", *extra)
    spec = build.read_config(cfg)
    assert cfg.name == experiment
    assert cfg.model.init == "ibp" and cfg.trainer.grad_clip == 10.0
    assert isinstance(spec.regularizer, WarmupRegularizer)
    assert cfg.bound.method == ("CROWN-IBP" if "bound=crown_ibp" in extra else "IBP")
    assert cfg.reweight.gamma == (5.0 if "reweight=on" in extra else 0.0)
    assert cfg.autoeps.maxoff == (0.15 if "autoeps=on" in extra else 0.0)


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("mnist_fast", dict(model="cnn_7layer", data="mnist", epochs=70, batch=256, eps_train=0.4, eps_eval=0.4,
                            sched="start=1,length=20", milestones=[50, 60], lr=5e-4)),
        ("cifar_fast", dict(model="cnn_7layer", data="cifar10", epochs=160, batch=128, eps_train=8 / 255,
                            eps_eval=8 / 255, sched="start=2,length=80", milestones=[120, 140], lr=5e-4)),
    ],
)
def test_fast_presets_carry_shi_et_al_numbers(experiment, expected):
    cfg = resolved(f"+experiment={experiment}")
    assert cfg.model.name == expected["model"] and cfg.data.name == expected["data"]
    assert cfg.trainer.epochs == expected["epochs"] and cfg.trainer.batch_size == expected["batch"]
    assert cfg.schedule.eps_train == pytest.approx(expected["eps_train"])
    assert cfg.schedule.eps_eval == pytest.approx(expected["eps_eval"])
    assert cfg.schedule.eps_scheduler._target_.endswith("SmoothedScheduler")
    assert cfg.schedule.eps_scheduler.opt_str == expected["sched"]
    assert list(cfg.schedule.lr_scheduler.milestones) == expected["milestones"]
    assert cfg.schedule.lr_scheduler.gamma == 0.2 and cfg.optimizer.lr == pytest.approx(expected["lr"])
    assert (cfg.schedule.kappa_start, cfg.schedule.kappa_end) == (0.0, 0.0)
    assert (cfg.regularizer.tol, cfg.regularizer["lambda"]) == (0.5, 0.5)


def test_mnist_fast_quick_differs_from_mnist_quick_only_in_the_fast_changes():
    quick, fast = resolved("+experiment=mnist_quick"), resolved("+experiment=mnist_fast_quick")
    groups = [group for group in quick if OmegaConf.is_dict(quick[group])]
    differing = {f"{group}.{key}" for group in groups for key in quick[group] if quick[group][key] != fast[group][key]}
    assert {key for key in quick if key not in groups and quick[key] != fast[key]} == {"name"}
    assert differing == {"model.name", "model.init", "regularizer.name", "regularizer.lambda", "trainer.grad_clip"}
    assert fast.model.name == "cnn_4layer_bn" and quick.model.name == "cnn_4layer"


@pytest.mark.parametrize("overrides, key", [(["regularizer=shi", "regularizer.tol=0"], "regularizer.tol"),
                                            (["regularizer=shi", "regularizer.lambda=-1"], "regularizer.lambda"),
                                            (["regularizer.name=nope"], "regularizer.name")])
def test_bad_regulariser_values_are_named(overrides, key):
    with pytest.raises(ValueError, match="bad config value " + key.replace(".", r"\.") + "="):
        build.read_config(resolved(*overrides))
