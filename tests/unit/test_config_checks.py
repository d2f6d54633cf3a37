"""Every key of every composed config is checked, by the table or by the object it goes to, and a wrong type or
range is refused up front, naming the key."""
import logging
import math
from importlib import resources

import pytest
import torch
from omegaconf import OmegaConf

from support import compose_config

from lirpa_reweight.errors import ConfigError
from lirpa_reweight.training import build, config_table
from lirpa_reweight.training.keys import matches

CONF = resources.files("lirpa_reweight.conf")
EXPERIMENTS = sorted(p.name[:-5] for p in (CONF / "experiment").iterdir() if p.name.endswith(".yaml"))
DATA = sorted(p.name[:-5] for p in (CONF / "data").iterdir() if p.name.endswith(".yaml"))
GROUP_SWITCHES = ["reweight=on", "reweight=off", "autoeps=on", "autoeps=off"]


def composed(overrides=(), config_name="config"):
    return compose_config(overrides, config_name, run_dir="unused" if config_name == "config" else None, resolve=True)


def keys_of(cfg):
    return [key for key, _ in config_table.leaves(OmegaConf.to_container(cfg))]


def is_checked(key, command="train"):
    table = config_table.train_checks() if command == "train" else config_table.evaluate_checks()
    return key in table or matches(key, config_table.OWNED[command])


# A table of key -> values its check must refuse: a wrong type and, where the key has a range, a value outside it.
BAD_TRAIN_VALUES = {
    "name": [5, ""],
    "seed": [1.5, "abc", True],
    "run_dir": [3, ""],
    "sweep_name": [3, ""],
    "objectives": [[], ["accuracy"], "verified_error"],
    "data.name": ["imagenet", 3],
    "data.root": [5, ""],
    "data.download": ["yes", 1],
    "data.augment": ["no"],
    "data.num_train": [0, -1, 1.5, "all"],
    "data.num_test": [0, 2.5],
    "data.in_shape": [[], [1, 0, 5], [1, 2, 3, 4], "1x28x28"],
    "data.num_classes": [1, 2.0],
    "data.data_seed": [0.5],
    "model.name": ["resnet9000", None],
    "model.init": ["xavier", 1],
    "regularizer.name": ["crown", None],
    "regularizer.tol": [0, -0.5, "x"],
    "regularizer.lambda": [-1, "big"],
    "bound.method": ["CROWN", "ibp", "alpha-CROWN"],
    "bound.lambda_start": [-0.1, 1.5, "big"],
    "bound.lambda_end": [2],
    "bound.alpha_start": [-1, "half"],
    "bound.alpha_end": [1.1],
    "bound.attack.steps": [-1, 2.5],
    "bound.attack.step_size": [0, -1.0, "x"],
    "bound.attack.restarts": [0, 1.5],
    "bound.attack.eps_scale": [0, -2.1, "big", math.inf],
    "schedule.eps_train": [-0.1, "abc", math.inf],
    "schedule.eps_eval": ["abc", -1, None, math.nan],
    "schedule.allow_eval_above_train": ["true"],
    "schedule.kappa_start": [1.5, -0.1],
    "schedule.kappa_end": [2, "half"],
    "bound.beta_start": [-1],
    "bound.loss_fusion": [1, "yes"],
    "bound.beta_end": [1.01],
    "schedule.lr": [0, -1e-3, "fast"],
    "schedule.eps_scheduler._target_": ["not a path!", 3],
    "schedule.eps_scheduler.max_eps": [-1, "max"],
    "schedule.eps_scheduler.opt_str": ["", 3],
    "schedule.lr_scheduler._target_": [""],
    "schedule.lr_scheduler._partial_": ["true"],
    "schedule.lr_scheduler.milestones": [[-1], [1.5], 4],
    "schedule.lr_scheduler.gamma": [0, -0.1],
    "reweight.enabled": ["on", 1],
    "reweight.gamma": [-1, "five"],
    "reweight.alpha": [-0.1],
    "autoeps.enabled": ["off", 0],
    "autoeps.maxoff": [-0.1, "x"],
    "optimizer._target_": ["torch optim Adam"],
    "optimizer._partial_": [1],
    "optimizer.lr": [0],
    "trainer.epochs": [0, 1.5, -1, "3"],
    "trainer.batch_size": [0, 64.0],
    "trainer.device": ["banana", 3, "cuda:99"],
    "trainer.workers": [-1, 1.5],
    "trainer.pin_memory": ["yes", 1],
    "trainer.checkpoint_every": [0, 0.5],
    "trainer.resume": ["yes"],
    "trainer.stop_after_epochs": [0, 1.5],
    "trainer.val_examples": [0, -5],
    "trainer.progress": ["false"],
    "trainer.grad_clip": [0, -10, "ten"],
    "trainer.clean_metric_every": [0, 2.5, "ten"],
    "trainer.divergence_factor": [1, 0.5, "big"],
    "trainer.deterministic": [2],
    "eval.methods": [[], ["IBP", "IBP"], ["PGD"], "IBP"],
    "eval.crown_max_relu_units": [-1, 1e3],
    "eval.pgd_steps": [-1, 2.5],
    "eval.batch_size": [0],
    "eval.alpha_crown_iterations": [0, 2.5],
    "eval.pgd_restarts": [0, 1.5],
    "eval.pgd_step_size": [0, -0.1, "big"],
    "eval.pgd_loss": ["hinge"],
    "eval.pgd_centre_start": ["yes"],
    "eval.pgd_seed": [1.5],
    "eval.autoattack": [1],
    "eval.autoattack_steps": [0],
    "eval.abcrown.timeout": [0, "long"],
    "eval.abcrown.device": [3],
    "eval.num_examples": [0, 2.5],
    "eval.examples_log": ["yes"],
}

BAD_EVALUATE_VALUES = {
    "checkpoint": ["???", 3],
    "eps": [-0.1, "abc"],
    "methods": [[], ["CROWN", "PGD"]],
    "crown_max_relu_units": [-1, "many"],
    "num_test": [0, 1.5],
    "batch_size": [0],
    "pgd_steps": [-2],
    "pgd_restarts": [0],
    "pgd_step_size": [-1],
    "pgd_loss": ["l2"],
    "pgd_centre_start": [0],
    "pgd_seed": ["x"],
    "autoattack": ["no"],
    "autoattack_steps": [-1],
    "abcrown.timeout": [-5],
    "abcrown.device": [1],
    "examples_log": [5],
    "alpha_crown_iterations": [0, "many"],
    "device": ["banana", "cuda:99"],
    "data_root": [7],
    "output": [1],
}


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_key_of_every_preset_is_checked(experiment):
    base = [f"+experiment={experiment}"] if experiment else []
    # Every data preset and group switch once (on the default recipe); each experiment with and without synthetic.
    extras = [[f"data={d}"] for d in DATA] + [[switch] for switch in GROUP_SWITCHES] if experiment is None \
        else [[], ["data=synthetic"]]
    for extra in extras:
        cfg = composed(base + extra)
        unchecked = [key for key in keys_of(cfg) if not is_checked(key)]
        assert not unchecked, f"add {unchecked} to config_table.train_checks() (and to BAD_TRAIN_VALUES here)"
        missing = [key for key in keys_of(cfg) if key not in BAD_TRAIN_VALUES]
        assert not missing, f"add bad values of {missing} to BAD_TRAIN_VALUES"
        build.read_config(cfg)


def test_every_key_of_evaluate_is_checked():
    cfg = composed(["checkpoint=last.pt"], config_name="evaluate")
    assert all(is_checked(key, "evaluate") for key in keys_of(cfg))
    assert set(keys_of(cfg)) == set(BAD_EVALUATE_VALUES)
    config_table.check_evaluate_config(OmegaConf.to_container(cfg))


def test_every_table_key_has_bad_values_to_try():
    assert set(config_table.train_checks()) <= set(BAD_TRAIN_VALUES)
    assert all(is_checked(key) for key in BAD_TRAIN_VALUES)
    assert set(config_table.evaluate_checks()) <= set(BAD_EVALUATE_VALUES)


@pytest.fixture(scope="module")
def good_train_cfg():
    return composed(["data=synthetic"])


@pytest.fixture(scope="module")
def good_evaluate_cfg():
    return composed(["checkpoint=last.pt"], config_name="evaluate")


@pytest.mark.parametrize("key", sorted(BAD_TRAIN_VALUES))
def test_a_bad_value_of_any_training_key_is_refused_naming_key_and_value(key, good_train_cfg):
    # A method's own options exist only in its bound group.
    group = {"bound.lambda": "bound=sabr", "bound.attack": "bound=sabr", "bound.alpha": "bound=cc_ibp",
             "bound.beta": "bound=crown_ibp"}
    extra = [g for prefix, g in group.items() if key.startswith(prefix)]
    good = composed(["data=synthetic", *extra]) if extra else good_train_cfg
    for bad in BAD_TRAIN_VALUES[key]:
        cfg = good.copy()
        OmegaConf.update(cfg, key, bad, merge=False)
        with pytest.raises(ConfigError) as error:
            build.read_config(cfg)
        message = str(error.value)
        assert error.value.key == key and message.startswith(f"bad config value {key}={bad!r}: "), message
        assert "\n" not in message


@pytest.mark.parametrize("key", sorted(BAD_EVALUATE_VALUES))
def test_a_bad_value_of_any_evaluate_key_is_refused_naming_key_and_value(key, good_evaluate_cfg):
    good = good_evaluate_cfg
    for bad in BAD_EVALUATE_VALUES[key]:
        cfg = good.copy()
        OmegaConf.update(cfg, key, bad, merge=False)
        with pytest.raises(ConfigError) as error:
            evaluate_config(cfg)
        assert error.value.key == key and str(error.value).startswith(f"bad config value {key}={bad!r}: ")


def evaluate_config(cfg):
    """What ``python -m lirpa_reweight.evaluate`` checks before it reads the checkpoint."""
    from lirpa_reweight.evaluate import check_config

    check_config(OmegaConf.to_container(cfg))


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("data.num_test=0", "data.num_test", "integer >= 1"),
        ("data.num_train=0", "data.num_train", "integer >= 1"),
        ("trainer.checkpoint_every=0", "trainer.checkpoint_every", "integer >= 1"),
        ("trainer.val_examples=0", "trainer.val_examples", "integer >= 1"),
        ("trainer.epochs=1.5", "trainer.epochs", "integer >= 1"),
        ("trainer.epochs=0", "trainer.epochs", "integer >= 1"),
        ("schedule.eps_eval=abc", "schedule.eps_eval", "a number >= 0"),
        ("eval.methods=[CROWN]", "eval.methods", "eval.crown_max_relu_units=2000"),
    ],
)
def test_the_issues_bad_command_line_values_are_refused(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        build.read_config(composed([override]))
    assert error.value.key == key and allowed in str(error.value)


def test_cuda_is_refused_on_a_machine_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.device='cuda'.*torch.cuda.is_available"):
        build.read_config(composed(["trainer.device=cuda"]))
    build.read_config(composed(["trainer.device=cpu"]))


def test_crown_alone_is_allowed_when_the_model_is_small_enough():
    build.read_config(composed(["eval.methods=[CROWN]", "eval.crown_max_relu_units=100000"]))


def test_maxoff_above_eps_train_warns_only_when_auto_eps_is_on(caplog):
    with caplog.at_level(logging.WARNING, logger="lirpa_reweight.training.build"):
        build.read_config(composed(["autoeps=on", "autoeps.maxoff=0.5"]))
    assert "autoeps.maxoff=0.5 is larger than schedule.eps_train=0.4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lirpa_reweight.training.build"):
        build.read_config(composed(["autoeps=on", "autoeps.maxoff=0.15"]))
        build.read_config(composed(["autoeps=off", "autoeps.maxoff=0.5"]))
    assert "maxoff" not in caplog.text


def test_an_unknown_added_key_warns(caplog):
    cfg = composed(["+trainer.epochz=3"])
    with caplog.at_level(logging.WARNING, logger="lirpa_reweight.training.config_table"):
        build.read_config(cfg)
    assert "trainer.epochz" in caplog.text


@pytest.mark.parametrize("bad", ["trainer.checkpoint_every=0", "reweight.gamma=-1", "bound=sabr bound.attack.steps=-1",
                                 "regularizer=shi regularizer.lambda=-1", "model.init=xavier"])
def test_train_refuses_before_building_data_or_writing_anything(bad, tmp_path, monkeypatch):
    from lirpa_reweight.data.datasets import SyntheticDataset
    from lirpa_reweight.training.run import train

    def no_data(*args, **kwargs):
        raise AssertionError("data was built before the config was checked")

    monkeypatch.setattr(SyntheticDataset, "__init__", no_data)
    cfg = composed(["data=synthetic", *bad.split()])
    cfg.run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="bad config value " + bad.split()[-1].split("=")[0]):
        train(cfg)
    assert not (tmp_path / "run").exists()


def _smoothed_scheduler_divides_by_zero(opt_str, batches_per_epoch):
    """What auto_LiRPA's own scheduler does over its whole ramp: the independent side of the check."""
    from auto_LiRPA.eps_scheduler import SmoothedScheduler
    scheduler = SmoothedScheduler(0.3, opt_str)
    scheduler.set_epoch_length(batches_per_epoch)
    scheduler.train()
    try:
        for _ in range(3 * batches_per_epoch):
            scheduler.step_batch()
    except ZeroDivisionError:
        return True
    return False


@pytest.mark.parametrize("opt_str, batches, refused", [
    ("start=1,length=1,mid=0.25", 2, True),    # int(2*0.25) = 0: no batch before the mid point
    ("start=1,length=1,mid=0.25", 4, False),   # int(4*0.25) = 1
    ("start=1,length=2,mid=0.25", 2, False),   # int(4*0.25) = 1
    ("start=1,length=1,mid=0", 100, True),     # mid 0
    ("start=1,length=1,mid=1", 100, True),     # mid 1: no batch after the mid point
    ("start=2,length=0", 100, True),           # an empty ramp
    ("start=1,length=20", 600, False),         # mnist_fast's ramp at batch 100
])
def test_an_eps_ramp_smoothedscheduler_cannot_run_is_refused_as_auto_lirpa_would_fail(opt_str, batches, refused):
    from hydra.utils import instantiate

    cfg = composed(["+experiment=mnist_fast", f"schedule.eps_scheduler.opt_str='{opt_str}'"])
    scheduler = instantiate(cfg.schedule.eps_scheduler)
    assert _smoothed_scheduler_divides_by_zero(opt_str, batches) == refused
    if refused:
        with pytest.raises(ValueError, match=r"schedule\.eps_scheduler\.opt_str=.*" + str(batches)
                           + " batches per epoch"):
            build.check_eps_ramp(scheduler, batches, opt_str)
    else:
        build.check_eps_ramp(scheduler, batches, opt_str)


def test_train_refuses_an_eps_ramp_too_short_for_its_batches_before_the_first_step(tmp_path, monkeypatch):
    from lirpa_reweight.training.run import train
    from lirpa_reweight.training.trainer import Trainer

    def no_step(*args, **kwargs):
        raise AssertionError("training started before the eps ramp was checked")

    monkeypatch.setattr(Trainer, "train_epoch", no_step)
    cfg = composed(["+experiment=mnist_fast", "data=synthetic", "data.num_train=200", "trainer.batch_size=100",
                    "schedule.eps_scheduler.opt_str='start=1,length=1,mid=0.25'"])
    cfg.run_dir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"opt_str='start=1,length=1,mid=0.25': with 2 batches per epoch"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()  # the run directory does not say that it started
