"""The SABR / CC-IBP / MTL-IBP presets compose (also with both tactics on), and every method trains through
``lirpa_reweight.train`` on synthetic data."""
import json

import pytest

from support import compose_config

from lirpa_reweight.methods.attack import AttackSettings
from lirpa_reweight.methods.cc_ibp import CCIBP
from lirpa_reweight.methods.mtl_ibp import MTLIBP
from lirpa_reweight.methods.sabr import SABR
from lirpa_reweight.training import build
from lirpa_reweight.training.run import train

PRESETS = {  # preset: (method, coefficient key, value, eps_eval, model)
    "cifar_sabr": ("SABR", "lambda_start", 0.7, 8 / 255, "cnn_7layer"),
    "cifar_sabr_2_255": ("SABR", "lambda_start", 0.1, 2 / 255, "cnn_7layer"),
    "cifar_ccibp": ("CC-IBP", "alpha_start", 0.5, 8 / 255, "cnn_7layer"),
    "cifar_ccibp_2_255": ("CC-IBP", "alpha_start", 0.01, 2 / 255, "cnn_7layer"),
    "cifar_mtlibp": ("MTL-IBP", "alpha_start", 0.5, 8 / 255, "cnn_7layer"),
    "cifar_mtlibp_2_255": ("MTL-IBP", "alpha_start", 0.004, 2 / 255, "cnn_7layer"),
    "mnist_sabr": ("SABR", "lambda_start", 0.6, 0.3, "cnn_4layer"),
    "mnist_ccibp": ("CC-IBP", "alpha_start", 0.3, 0.3, "cnn_4layer"),
    "mnist_mtlibp": ("MTL-IBP", "alpha_start", 0.08, 0.3, "cnn_4layer"),
}
# The papers' code: SABR 180 epochs at 8/255 (eth-sri/SABR README), CC-IBP / MTL-IBP 260 (expressive-losses); 160 at
# 2/255; all with auto_LiRPA's smoothed ramp at mid 0.25.
PAPER_RAMP = "start=2,length=80,mid=0.25"
SCHEDULES = {  # preset: (epochs, lr milestones, eps ramp)
    "cifar_sabr": (180, [140, 160], PAPER_RAMP),
    "cifar_sabr_2_255": (160, [120, 140], PAPER_RAMP),
    "cifar_ccibp": (260, [180, 220], PAPER_RAMP),
    "cifar_ccibp_2_255": (160, [120, 140], PAPER_RAMP),
    "cifar_mtlibp": (260, [180, 220], PAPER_RAMP),
    "cifar_mtlibp_2_255": (160, [120, 140], PAPER_RAMP),
    "mnist_sabr": (6, [4], "start=1,length=3,mid=0.4"),
    "mnist_ccibp": (6, [4], "start=1,length=3,mid=0.4"),
    "mnist_mtlibp": (6, [4], "start=1,length=3,mid=0.4"),
}
# CC-IBP / MTL-IBP at 2/255 (expressive-losses README): 8 steps of 0.25 x the attack radius, over 2.1 x eps.
ATTACKS = {  # preset: (steps, step_size, restarts, eps_scale)
    "cifar_sabr": (8, None, 1, 1.0),
    "cifar_sabr_2_255": (8, None, 1, 1.0),
    "cifar_ccibp": (1, 10.0, 1, 1.0),
    "cifar_ccibp_2_255": (8, 0.25, 1, 2.1),
    "cifar_mtlibp": (1, 10.0, 1, 1.0),
    "cifar_mtlibp_2_255": (8, 0.25, 1, 2.1),
    "mnist_sabr": (3, None, 1, 1.0),
    "mnist_ccibp": (1, 10.0, 1, 1.0),
    "mnist_mtlibp": (1, 10.0, 1, 1.0),
}
CLASSES = {"SABR": SABR, "CC-IBP": CCIBP, "MTL-IBP": MTLIBP}

TINY = [
    "data=synthetic", "data.in_shape=[1,10,10]", "data.num_train=96", "data.num_test=32",
    "trainer.batch_size=48", "trainer.val_examples=32", "trainer.progress=false", "trainer.epochs=2",
    "schedule.eps_train=0.05", "schedule.eps_eval=0.03", "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'",
    "eval.methods=[IBP]", "eval.pgd_steps=2", "reweight=on", "autoeps=on",
]


def compose_run(overrides):
    return compose_config(overrides, run_dir="unused", resolve=True)


@pytest.mark.parametrize("tactics", [[], ["reweight=on", "autoeps=on"]])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_method_presets_compose_validate_and_build_their_method(preset, tactics):
    method, key, value, eps_eval, model = PRESETS[preset]
    epochs, milestones, ramp = SCHEDULES[preset]
    cfg = compose_run([f"+experiment={preset}", *tactics])
    spec = build.read_config(cfg)
    assert cfg.name == preset and cfg.bound.method == method and cfg.bound[key] == value
    assert cfg.model.name == model and cfg.trainer.epochs == epochs
    assert list(cfg.schedule.lr_scheduler.milestones) == milestones and cfg.schedule.eps_scheduler.opt_str == ramp
    assert cfg.schedule.eps_eval == pytest.approx(eps_eval) and cfg.schedule.eps_train >= cfg.schedule.eps_eval
    assert (cfg.reweight.gamma > 0) == bool(tactics) and (cfg.autoeps.maxoff > 0) == bool(tactics)
    # The papers' CIFAR code trains with Shi et al.'s IBP init, warm-up regulariser and clipping; the MNIST twins
    # are mnist_quick with the method, without them.
    fast = preset.startswith("cifar_")
    assert (cfg.model.init, cfg.regularizer.name, cfg.trainer.grad_clip) == (("ibp", "shi", 10.0) if fast else
                                                                            ("default", "none", None))
    built = spec.method
    assert isinstance(built, CLASSES[method]) and built.attack == AttackSettings(*ATTACKS[preset])


def test_the_shared_cifar_schedule_keeps_shi_et_al_ramp_and_length():
    # The method presets override the ramp and length in themselves, not in the schedule cifar_ibp & co. share.
    cfg = compose_run(["schedule=cifar_cnn7"])
    assert cfg.schedule.eps_scheduler.opt_str == "start=2,length=80,mid=0.4"
    assert list(cfg.schedule.lr_scheduler.milestones) == [120, 140]


def test_bad_method_options_are_refused_before_training():
    with pytest.raises(ValueError, match=r"bound.lambda_start=1.5: a number in \[0, 1\]"):
        build.read_config(compose_run(["+experiment=mnist_sabr", "bound.lambda_start=1.5"]))
    with pytest.raises(ValueError, match=r"bound.attack.steps=-1: an integer >= 0"):
        build.read_config(compose_run(["bound=cc_ibp", "bound.attack.steps=-1"]))
    with pytest.raises(ValueError, match=r"bound.attack.eps_scale=0: a number > 0"):
        build.read_config(compose_run(["bound=mtl_ibp", "bound.attack.eps_scale=0"]))
    # SABR's small box lives inside each example's eps_i ball: a larger attack ball is refused before training.
    with pytest.raises(ValueError, match=r"bad config value bound.attack.eps_scale=2.1: 1 for SABR"):
        build.read_config(compose_run(["+experiment=cifar_sabr", "bound.attack.eps_scale=2.1"]))
    with pytest.raises(ValueError, match="bound.method"):
        build.read_config(compose_run(["bound.method=TAPS"]))
    with pytest.raises(ValueError, match="eval.alpha_crown_iterations"):
        build.read_config(compose_run(["eval.alpha_crown_iterations=0"]))


@pytest.mark.parametrize("preset, coefficient", [("mnist_sabr", "sabr_lambda"), ("mnist_ccibp", "alpha"),
                                                 ("mnist_mtlibp", "alpha")])
def test_every_new_method_trains_through_the_cli_function(tmp_path, preset, coefficient):
    cfg = compose_run([f"+experiment={preset}", *TINY])
    cfg.run_dir = str(tmp_path)
    final = train(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1][coefficient] == PRESETS[preset][2]
    assert all(0 < m["loss"] < 20 for m in metrics) and metrics[-1]["autoeps_mean_offset"] >= 0
    assert 0 <= final["verified_error"] <= 1 and final["verified_by"]["IBP"] is not None
    assert json.loads((tmp_path / "final.json").read_text())["verified_by"] == final["verified_by"]


@pytest.mark.parametrize("preset", ["mnist_sabr", "mnist_ccibp", "mnist_mtlibp"])
def test_every_new_method_trains_with_the_fast_training_changes(tmp_path, preset):
    """As the CIFAR presets train them: IBP init, the warm-up regulariser (on the bounds the method computed) and
    clipping; the regulariser raises the loss during the ramp, as it only adds non-negative terms (tol 1 makes
    them positive for any growth or imbalance: at the default 0.5 a well-initialised tiny network may owe none)."""
    losses = {}
    for regularizer in ("none", "shi"):
        cfg = compose_run([f"+experiment={preset}", *TINY, "model.init=ibp", f"regularizer={regularizer}",
                           "regularizer.tol=1.0", "trainer.grad_clip=10", "trainer.epochs=1"])
        cfg.run_dir = str(tmp_path / regularizer)
        train(cfg)
        losses[regularizer] = json.loads((tmp_path / regularizer / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert losses["shi"] > losses["none"] > 0
