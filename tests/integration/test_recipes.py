"""Every packaged preset composes, and the config guards refuse bad values before training."""
from importlib import resources

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from support import compose_config

from lirpa_reweight.training import build

CONF = resources.files("lirpa_reweight.conf")
EXPERIMENTS = sorted(p.name[:-5] for p in (CONF / "experiment").iterdir() if p.name.endswith(".yaml"))
SWEEPS = sorted(p.name[:-5] for p in (CONF / "sweep").iterdir() if p.name.endswith(".yaml"))


def compose_run(overrides=()):
    return compose_config(overrides, hydra=True)


def resolved(cfg):
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    cfg.run_dir = "unused"
    OmegaConf.resolve(cfg)
    return cfg


def test_the_paper_presets_are_all_there():
    assert {"mnist_quick", "mnist_ibp", "mnist_crownibp", "cifar_ibp", "cifar_ibp_14", "cifar_crownibp",
            "cifar_crownibp_14", "mnist_dmsmall_ibp", "cifar_dmsmall_ibp", "mnist_ibp_eps01",
            "cifar_ibp_2_255"} <= set(EXPERIMENTS)
    assert {"gamma", "maxoff", "tactics"} <= set(SWEEPS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = resolved(compose_run([f"+experiment={experiment}"]))
    build.read_config(cfg)
    assert cfg.name == experiment


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_as_a_multirun(sweep):
    if sweep.startswith("optuna"):  # the optuna_* presets select hydra/sweeper=optuna (the launchers extra)
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_run(["+experiment=mnist_ibp", f"+sweep={sweep}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert "seed" in cfg.hydra.sweeper.params


def test_default_config_is_mnist_quick():
    assert resolved(compose_run()) == resolved(compose_run(["+experiment=mnist_quick"]))


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("mnist_ibp", dict(model="dm_large", method="IBP", epochs=100, batch=100, eps_train=0.4, eps_eval=0.3,
                           sched="start=4,length=17", milestones=[25, 42], lr=1e-3, gamma=5.0, maxoff=0.15)),
        ("mnist_crownibp", dict(model="dm_large", method="CROWN-IBP", epochs=200, batch=256, eps_train=0.4,
                                eps_eval=0.3, sched="start=10,length=40", milestones=[130, 190], lr=1e-3,
                                gamma=5.0, maxoff=0.15)),
        ("cifar_crownibp_14", dict(model="dm_large", method="CROWN-IBP", epochs=3200, batch=256,
                                   eps_train=14 / 255, eps_eval=8 / 255, sched="start=321,length=1600",
                                   milestones=[2600, 3040], lr=5e-4, gamma=5.0, maxoff=0.01)),
        ("cifar_ibp", dict(model="dm_large", method="IBP", epochs=3200, batch=1024, eps_train=8.8 / 255,
                           eps_eval=8 / 255, sched="start=321,length=1600", milestones=[2600, 3040], lr=5e-4,
                           gamma=5.0, maxoff=0.01)),
    ],
)
def test_presets_carry_the_papers_numbers(experiment, expected):
    cfg = resolved(compose_run([f"+experiment={experiment}"]))
    assert cfg.model.name == expected["model"] and cfg.bound.method == expected["method"]
    assert cfg.trainer.epochs == expected["epochs"] and cfg.trainer.batch_size == expected["batch"]
    assert cfg.schedule.eps_train == pytest.approx(expected["eps_train"])
    assert cfg.schedule.eps_eval == pytest.approx(expected["eps_eval"])
    assert cfg.schedule.eps_scheduler.opt_str == expected["sched"]
    assert cfg.schedule.eps_scheduler.max_eps == pytest.approx(expected["eps_train"])
    assert list(cfg.schedule.lr_scheduler.milestones) == expected["milestones"]
    assert cfg.optimizer.lr == pytest.approx(expected["lr"])
    assert (cfg.schedule.kappa_start, cfg.schedule.kappa_end) == (1.0, 0.5)
    assert (cfg.reweight.gamma, cfg.reweight.alpha) == (expected["gamma"], 0.1)
    assert cfg.autoeps.maxoff == expected["maxoff"]
    assert cfg.data.augment == cfg.data.name.startswith("cifar")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm"])
def test_documented_launchers_compose(launcher):
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher",
                         "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    cfg = compose_run(["+experiment=mnist_ibp", f"hydra/launcher={launcher}"])
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_unknown_key_and_unknown_preset_are_named():
    with pytest.raises(ConfigCompositionException, match="trainer.epochz"):
        compose_run(["trainer.epochz=3"])
    with pytest.raises(ConfigCompositionException, match="no_such_preset"):
        compose_run(["+experiment=no_such_preset"])


@pytest.mark.parametrize(
    "overrides, key, allowed",
    [
        (["model.name=resnet9000"], "model.name", "one of"),
        (["data.name=imagenet"], "data.name", "one of"),
        (["trainer.epochs=-1"], "trainer.epochs", ">= 1"),
        (["schedule.eps_eval=0.5"], "schedule.eps_eval", "at most schedule.eps_train=0.4"),
        (["schedule.eps_train=-0.1", "schedule.eps_eval=0"], "schedule.eps_train", ">= 0"),
        (["reweight.gamma=-1"], "reweight.gamma", ">= 0"),
        (["autoeps.maxoff=-0.1"], "autoeps.maxoff", ">= 0"),
        (["schedule.kappa_end=1.5"], "schedule.kappa_end", "in [0, 1]"),
        (["eval.methods=[IBP,PGD]"], "eval.methods", "drawn from"),
    ],
)
def test_bad_values_are_refused_with_key_and_allowed_values(overrides, key, allowed):
    cfg = resolved(compose_run(overrides))
    with pytest.raises(ValueError) as error:
        build.read_config(cfg)
    assert key in str(error.value) and allowed in str(error.value)


def test_eval_above_train_can_be_allowed_explicitly():
    build.read_config(resolved(compose_run(["schedule.eps_eval=0.5", "schedule.allow_eval_above_train=true"])))
