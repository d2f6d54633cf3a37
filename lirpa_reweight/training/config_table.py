"""What the config keys that no constructor of ours receives may hold: one declarative table per command.

Each value is checked once, by what uses it (docs/design.md). The keys handed to our own objects (the hooks, the
training method, the regulariser, the model and its initialisation, the evaluation's verifiers: :data:`OWNED`)
are checked by those objects, and the builder names the key in their error. Every other key of a composed config
(``train``'s ``conf/config.yaml`` with any preset, ``evaluate``'s ``conf/evaluate.yaml``) has an entry here saying
its type and range, checked before any work starts. A bad value is refused in one line naming the key, the value
and what is allowed. A key in neither is a test failure (tests/unit/test_config_checks.py), so a new key is added
with the change that introduces it; at run time an unknown key (``+trainer.foo=1``) only warns, since an
instantiated target (``optimizer``, the schedulers) may accept arguments no preset uses.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from ..errors import ConfigError
from ..evaluation.plan import ATTACK_KEYS
from .keys import OBJECTIVES, matches

#: The evaluation's own options (evaluation/plan.py: the verifiers, the attack, alpha-beta-CROWN), checked there.
EVALUATION_OPTION_KEYS = ("methods", "alpha_crown_iterations", *ATTACK_KEYS, "abcrown.")

log = logging.getLogger(__name__)

MISSING = "???"

#: Keys (a rule ending in "." covers a group) whose values our own objects check: the builder hands them over and
#: names the key in their error (training/build.py).
OWNED = {
    "train": ("model.", "bound.", "regularizer.", "reweight.gamma", "reweight.alpha", "autoeps.maxoff",
              *(f"eval.{key}" for key in EVALUATION_OPTION_KEYS), "trainer.divergence_factor"),
    "evaluate": EVALUATION_OPTION_KEYS,
}


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
    from ..data.datasets import DATASET_NAMES

    return DATASET_NAMES


def train_checks() -> dict[str, Check]:
    """Every key of ``python -m lirpa_reweight.train``'s composed config (any preset), and what it may hold."""
    fraction = number(0.0, 1.0)
    radius = number(minimum=0.0)
    return {
        "name": text(),
        "seed": integer(),
        "run_dir": text(),
        "sweep_name": optional(text(), "name the sweep directory by its launch time"),
        "objectives": method_list(OBJECTIVES),
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
        # schedule
        "schedule.eps_train": radius,
        "schedule.eps_eval": radius,
        "schedule.allow_eval_above_train": boolean(),
        "schedule.kappa_start": fraction,
        "schedule.kappa_end": fraction,
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
        "autoeps.enabled": boolean(),
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
        "trainer.clean_metric_every": integer(1),
        # final evaluation
        "eval.crown_max_relu_units": integer(0),
        "eval.batch_size": integer(1),
        "eval.num_examples": optional(integer(1), "the whole test split (or data.num_test)"),
        "eval.examples_log": boolean(),
    }


def evaluate_checks() -> dict[str, Check]:
    """Every key of ``python -m lirpa_reweight.evaluate``'s config (conf/evaluate.yaml)."""
    return {
        "checkpoint": text(),
        "eps": optional(number(minimum=0.0), "the run's schedule.eps_eval"),
        "crown_max_relu_units": integer(0),
        "num_test": optional(integer(1), "the whole test split"),
        "batch_size": integer(1),
        "examples_log": optional(text(), "no per-example log"),
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


def check_table(container: Mapping, table: Mapping[str, Check], owned: Iterable[str] = ()) -> list[str]:
    """Check each leaf against its table entry, passing over the ``owned`` keys; return the keys neither knows."""
    unknown = []
    for key, value in leaves(container):
        if matches(key, owned):
            continue
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

def check_train_config(config: Mapping) -> None:
    """Refuse a bad value of a key of the table (``config``: the resolved training config, a plain dict)."""
    _warn_unknown(check_table(config, train_checks(), OWNED["train"]))
    schedule = config["schedule"]
    if not schedule["allow_eval_above_train"] and schedule["eps_eval"] > schedule["eps_train"]:
        raise ConfigError("schedule.eps_eval", schedule["eps_eval"],
                          f"at most schedule.eps_train={schedule['eps_train']} in this preset "
                          "(set schedule.allow_eval_above_train=true to allow it)")
    check_loss_fusion(config)


#: The training methods whose loss is one cross-entropy that auto_LiRPA's loss fusion can bound.
LOSS_FUSION_METHODS = ("IBP", "CROWN-IBP")


def check_loss_fusion(config: Mapping) -> None:
    """``bound.loss_fusion=true`` only for IBP / CROWN-IBP."""
    bound = config["bound"]
    if not bound.get("loss_fusion", False):
        return
    if bound["method"] not in LOSS_FUSION_METHODS:
        raise ConfigError("bound.loss_fusion", bound["loss_fusion"],
                          f"false for {bound['method']} (loss fusion bounds one cross-entropy: "
                          f"{' and '.join(LOSS_FUSION_METHODS)} only)")


def check_evaluate_config(config: Mapping) -> None:
    """The same for ``python -m lirpa_reweight.evaluate``'s config."""
    _warn_unknown(check_table(config, evaluate_checks(), OWNED["evaluate"]))
