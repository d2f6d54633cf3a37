"""What every config key may hold: one declarative table per command, checked before any work starts.

Each key of a composed config (``train``'s ``conf/config.yaml`` with any preset, ``evaluate``'s
``conf/evaluate.yaml``) has an entry saying its type and range. A bad value is refused in one line naming the key,
the value and what is allowed. A key missing from the table is a test failure (tests/test_config_checks.py), so a
new key is added here with the change that introduces it; at run time an unknown key (``+trainer.foo=1``) only
warns, since an instantiated target (``optimizer``, the schedulers) may accept arguments no preset uses.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

MISSING = "???"


class ConfigError(ValueError):
    """A config value outside what its key allows; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"bad config value {key}={value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


@dataclass(frozen=True)
class Check:
    """``ok(value)`` says whether ``value`` is allowed; ``allowed`` says so in words for the error message."""

    ok: Callable[[Any], bool]
    allowed: str

    def __call__(self, key: str, value: Any) -> None:
        try:
            good = self.ok(value)
        except (TypeError, ValueError, RuntimeError):  # torch.device("banana") raises RuntimeError
            good = False
        if not good:
            raise ConfigError(key, value, self.allowed)


# --- building blocks ------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(minimum: Optional[int] = None) -> Check:
    text = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    return Check(lambda v: _is_int(v) and (minimum is None or v >= minimum), text)


def number(minimum: Optional[float] = None, maximum: Optional[float] = None, above: Optional[float] = None) -> Check:
    if minimum is not None and maximum is not None:
        text = f"a number in [{minimum:g}, {maximum:g}]"
    elif above is not None:
        text = f"a number > {above:g}"
    else:
        text = "a number" + (f" >= {minimum:g}" if minimum is not None else "")
    return Check(lambda v: _is_number(v) and (minimum is None or v >= minimum)
                 and (maximum is None or v <= maximum) and (above is None or v > above), text)


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "true or false")


def text(nonempty: bool = True) -> Check:
    return Check(lambda v: isinstance(v, str) and (bool(v.strip()) or not nonempty), "a non-empty string")


def dotted_path() -> Check:
    return Check(lambda v: isinstance(v, str) and all(part.isidentifier() for part in v.split(".")),
                 "a dotted Python path (module.Class) for hydra.utils.instantiate")


def choice(options) -> Check:
    return Check(lambda v: isinstance(v, str) and v in options, f"one of {sorted(options)}")


def optional(check: Check, meaning: str) -> Check:
    return Check(lambda v: v is None or check.ok(v), f"null ({meaning}) or {check.allowed}")


def int_list(minimum: int, min_length: int = 0, max_length: Optional[int] = None) -> Check:
    size = f"{min_length} to {max_length}" if max_length is not None else f"at least {min_length}"
    return Check(lambda v: isinstance(v, (list, tuple)) and min_length <= len(v) <= (max_length or len(v))
                 and all(_is_int(x) and x >= minimum for x in v), f"a list of {size} integers >= {minimum}")


def method_list(options) -> Check:
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
                 and all(isinstance(m, str) and m in options for m in v),
                 f"a non-empty list without repeats drawn from {list(options)}")


def _device_ok(value) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    import torch  # only where a device is named: checking the rest of a config needs no torch

    device = torch.device(value)
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return device.type == "cpu"


def device() -> Check:
    return Check(_device_ok, "null (CUDA when available, else CPU), 'cpu', or 'cuda'/'cuda:N' for a GPU this "
                             "machine has (torch.cuda.is_available() and N below torch.cuda.device_count())")


# --- the tables -------------------------------------------------------------------------------------------------

def _data_names():
    from .data import DATASET_NAMES

    return DATASET_NAMES


def _methods():
    from .bounds import METHODS

    return tuple(METHODS)


def _training_methods():
    from .methods import METHODS

    return tuple(METHODS)


def _model_names():
    from .models import MODELS

    return tuple(MODELS)


def train_checks() -> dict[str, Check]:
    """Every key of ``python -m lirpa_reweight.train``'s composed config (any preset), and what it may hold."""
    fraction = number(0.0, 1.0)
    radius = number(minimum=0.0)
    return {
        "name": text(),
        "seed": integer(),
        "run_dir": text(),
        "sweep_name": optional(text(), "name the sweep directory by its launch time"),
        "objectives": method_list(("clean_error", "pgd_error", "verified_error")),
        # data
        "data.name": choice(_data_names()),
        "data.root": optional(text(), "the default data directory"),
        "data.download": boolean(),
        "data.augment": boolean(),
        "data.num_train": optional(integer(1), "the whole training split"),
        "data.num_test": optional(integer(1), "the whole test split"),
        "data.in_shape": int_list(1, 1, 3),
        "data.num_classes": integer(2),
        "data.data_seed": integer(),
        # model and bound
        "model.name": choice(_model_names()),
        "model.init": choice(("default", "ibp")),
        # Shi et al.'s warm-up regularisers (conf/regularizer/)
        "regularizer.name": choice(("none", "shi")),
        "regularizer.tol": number(above=0.0),
        "regularizer.lambda": number(minimum=0.0),
        "bound.method": choice(_training_methods()),
        # the options of SABR, CC-IBP, MTL-IBP (their own groups under conf/bound/)
        "bound.lambda_start": number(0.0, 1.0),
        "bound.lambda_end": number(0.0, 1.0),
        "bound.alpha_start": fraction,
        "bound.alpha_end": fraction,
        "bound.attack.steps": integer(0),
        "bound.attack.step_size": optional(number(above=0.0), "2.5 / steps, as a multiple of eps_i"),
        "bound.attack.restarts": integer(1),
        "bound.attack.eps_scale": number(above=0.0),
        # schedule
        "schedule.eps_train": radius,
        "schedule.eps_eval": radius,
        "schedule.allow_eval_above_train": boolean(),
        "schedule.kappa_start": fraction,
        "schedule.kappa_end": fraction,
        "schedule.beta_start": fraction,
        "schedule.beta_end": fraction,
        "schedule.lr": number(above=0.0),
        "schedule.eps_scheduler._target_": dotted_path(),
        "schedule.eps_scheduler.max_eps": radius,
        "schedule.eps_scheduler.opt_str": text(),
        "schedule.lr_scheduler._target_": dotted_path(),
        "schedule.lr_scheduler._partial_": boolean(),
        "schedule.lr_scheduler.milestones": int_list(0),
        "schedule.lr_scheduler.gamma": number(above=0.0),
        # the two hooks: `enabled` is the switch, the rest is used only when it is true
        "reweight.enabled": boolean(),
        "reweight.gamma": number(minimum=0.0),
        "reweight.alpha": number(minimum=0.0),
        "autoeps.enabled": boolean(),
        "autoeps.maxoff": number(minimum=0.0),
        # optimizer
        "optimizer._target_": dotted_path(),
        "optimizer._partial_": boolean(),
        "optimizer.lr": number(above=0.0),
        # trainer
        "trainer.epochs": integer(1),
        "trainer.batch_size": integer(1),
        "trainer.device": device(),
        "trainer.workers": optional(integer(0), "0 on CPU, min(8, cores per rank - 1) on CUDA"),
        "trainer.pin_memory": optional(boolean(), "true on CUDA"),
        "trainer.checkpoint_every": integer(1),
        "trainer.resume": boolean(),
        "trainer.stop_after_epochs": optional(integer(1), "train every epoch"),
        "trainer.val_examples": optional(integer(1), "the whole test split"),
        "trainer.progress": boolean(),
        "trainer.deterministic": boolean(),
        "trainer.grad_clip": optional(number(above=0.0), "no gradient clipping"),
        "trainer.divergence_factor": optional(number(above=1.0), "stop only on non-finite losses"),
        # final evaluation
        "eval.methods": method_list(_methods()),
        "eval.crown_max_relu_units": integer(0),
        "eval.pgd_steps": integer(0),
        "eval.batch_size": integer(1),
        "eval.alpha_crown_iterations": integer(1),
    }


def evaluate_checks() -> dict[str, Check]:
    """Every key of ``python -m lirpa_reweight.evaluate``'s config (conf/evaluate.yaml)."""
    return {
        "checkpoint": text(),
        "eps": optional(number(minimum=0.0), "the run's schedule.eps_eval"),
        "methods": method_list(_methods()),
        "crown_max_relu_units": integer(0),
        "num_test": optional(integer(1), "the whole test split"),
        "batch_size": integer(1),
        "pgd_steps": integer(0),
        "alpha_crown_iterations": integer(1),
        "device": device(),
        "data_root": optional(text(), "the run's data.root"),
        "output": optional(text(), "print only"),
    }


# --- walking a config -------------------------------------------------------------------------------------------

def leaves(config: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of a nested mapping; lists are leaves."""
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def as_container(cfg) -> dict:
    """A plain, resolved dict of ``cfg`` (a DictConfig or a mapping), Hydra's own ``hydra`` node left out."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        container = dict(cfg)
    container.pop("hydra", None)
    return container


def check_table(container: Mapping, table: Mapping[str, Check]) -> list[str]:
    """Check each leaf against its table entry; return the keys the table does not know."""
    unknown = []
    for key, value in leaves(container):
        if key not in table:
            unknown.append(key)
            continue
        if value == MISSING:
            raise ConfigError(key, value, f"a value is required ({table[key].allowed})")
        table[key](key, value)
    return unknown


def _warn_unknown(unknown: list[str]) -> None:
    if unknown:
        log.warning("config keys this version does not check (spelling?): %s", ", ".join(unknown))


# --- the commands' checks ---------------------------------------------------------------------------------------

def check_train_config(cfg) -> None:
    """Refuse a bad training config before data or model are built; warn about legal but risky values."""
    config = as_container(cfg)
    _warn_unknown(check_table(config, train_checks()))
    schedule, autoeps = config["schedule"], config["autoeps"]
    if not schedule["allow_eval_above_train"] and schedule["eps_eval"] > schedule["eps_train"]:
        raise ConfigError("schedule.eps_eval", schedule["eps_eval"],
                          f"at most schedule.eps_train={schedule['eps_train']} in this preset "
                          "(set schedule.allow_eval_above_train=true to allow it)")
    if autoeps["enabled"] and autoeps["maxoff"] > schedule["eps_train"]:
        log.warning("autoeps.maxoff=%g is larger than schedule.eps_train=%g: an example with a margin below "
                    "-eps_train/maxoff gets an offset above eps_base, so its eps is clipped to 0 (it trains on "
                    "clean data only); the paper uses maxoff 0.15 for eps_train 0.4 on MNIST",
                    autoeps["maxoff"], schedule["eps_train"])
    _check_some_final_method_runs(config)


def _check_some_final_method_runs(config: dict) -> None:
    """``eval.methods=[CROWN]`` on a model too large for CROWN would train for nothing: refuse it now."""
    methods, limit = config["eval"]["methods"], config["eval"]["crown_max_relu_units"]
    if set(methods) != {"CROWN"}:
        return
    import torch

    from .data import dataset_info
    from .models import build_model, relu_units

    data = config["data"]
    info = dataset_info(data["name"], data.get("in_shape", (1, 28, 28)), data.get("num_classes", 10))
    units = relu_units(build_model(config["model"]["name"], info.in_shape, info.num_classes),
                       torch.zeros(1, *info.in_shape))
    if units > limit:
        raise ConfigError("eval.methods", methods,
                          f"CROWN alone would be skipped: {config['model']['name']} has {units} ReLU units per "
                          f"example, above eval.crown_max_relu_units={limit}; add IBP or CROWN-IBP, or raise the limit")


def check_evaluate_config(cfg) -> None:
    """Refuse a bad ``evaluate`` config before the checkpoint is read."""
    _warn_unknown(check_table(as_container(cfg), evaluate_checks()))
