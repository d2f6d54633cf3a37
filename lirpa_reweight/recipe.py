"""Build the objects of a training run from a composed Hydra config, and check that config first.

The hooks know nothing of Hydra; this module is the only place that reads ``cfg`` to make them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from . import checkpoint
from .autoeps import AutoEpsScheduler
from .bounds import METHODS, BoundedClassifier, resolve_device
from .data import DATASETS, build_dataset
from .init import apply_init
from .models import MODELS, build_model
from .regularizers import WarmupRegularizer
from .reweight import WeightedRobustLoss


def validate(cfg: DictConfig) -> None:
    """Refuse a bad config before any work starts, naming the key, the value and what is allowed."""

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"bad config value {key}={OmegaConf.select(cfg, key)!r}: {allowed}")

    need(cfg.data.name in (*DATASETS, "synthetic"), "data.name", f"one of {sorted((*DATASETS, 'synthetic'))}")
    need(cfg.model.name in MODELS, "model.name", f"one of {sorted(MODELS)}")
    need(cfg.bound.method in METHODS[:2], "bound.method", f"one of {list(METHODS[:2])} for training")
    need(cfg.trainer.epochs >= 0, "trainer.epochs", "an integer >= 0")
    need(cfg.trainer.batch_size > 0, "trainer.batch_size", "an integer > 0")
    need(cfg.schedule.eps_train >= 0, "schedule.eps_train", "a radius >= 0 (pixel units)")
    need(cfg.schedule.eps_eval >= 0, "schedule.eps_eval", "a radius >= 0 (pixel units)")
    need(cfg.schedule.allow_eval_above_train or cfg.schedule.eps_eval <= cfg.schedule.eps_train,
         "schedule.eps_eval", f"at most schedule.eps_train={cfg.schedule.eps_train} in this preset "
         "(set schedule.allow_eval_above_train=true to allow it)")
    for key in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
        need(0.0 <= cfg.schedule[key] <= 1.0, f"schedule.{key}", "a number in [0, 1]")
    need(cfg.reweight.gamma >= 0, "reweight.gamma", "a number >= 0 (0 turns re-weighting off)")
    need(cfg.reweight.alpha >= 0, "reweight.alpha", "a number >= 0")
    need(cfg.autoeps.maxoff >= 0, "autoeps.maxoff", "a number >= 0 (0 turns auto eps off)")
    for method in cfg.eval.methods:
        need(method in METHODS, "eval.methods", f"a list drawn from {list(METHODS)}")


def dataset_kwargs(data_cfg: DictConfig) -> dict:
    kwargs = dict(root=data_cfg.root, download=data_cfg.get("download", True))
    if data_cfg.name == "synthetic":
        kwargs.update(in_shape=tuple(data_cfg.in_shape), num_classes=data_cfg.num_classes, seed=data_cfg.data_seed)
    return kwargs


def _subset(dataset, num_examples: Optional[int]):
    # A prefix subset keeps every example's dataset index, so per-example state stays keyed correctly.
    if num_examples is None or num_examples >= len(dataset):
        return dataset
    return Subset(dataset, range(num_examples))


def train_dataset(cfg: DictConfig):
    kwargs = dataset_kwargs(cfg.data)
    if cfg.data.name == "synthetic":
        kwargs["num_examples"] = cfg.data.num_train
    return build_dataset(cfg.data.name, train=True, augment=cfg.data.augment, **kwargs)


def test_loader(cfg: DictConfig, num_examples: Optional[int] = None, batch_size: Optional[int] = None) -> DataLoader:
    kwargs = dataset_kwargs(cfg.data)
    if cfg.data.name == "synthetic":
        kwargs["num_examples"] = cfg.data.num_test
    dataset = build_dataset(cfg.data.name, train=False, augment=False, **kwargs)
    limit = num_examples if num_examples is not None else cfg.data.num_test
    return DataLoader(_subset(dataset, limit), batch_size=batch_size or cfg.eval.batch_size, shuffle=False,
                      num_workers=cfg.trainer.workers)


def train_loader(cfg: DictConfig, dataset, generator: torch.Generator) -> DataLoader:
    return DataLoader(_subset(dataset, cfg.data.num_train), batch_size=cfg.trainer.batch_size, shuffle=True,
                      generator=generator, num_workers=cfg.trainer.workers, drop_last=False)


def data_info(dataset) -> dict:
    """Input shape, class count and normalisation of an indexed data set, as plain values."""
    info = dataset.info
    return dict(in_shape=list(info.in_shape), num_classes=int(info.num_classes),
                mean=None if info.mean is None else list(info.mean), std=None if info.std is None else list(info.std))


def build_classifier(model_name: str, info: dict, device=None, init: str = "default") -> BoundedClassifier:
    model = apply_init(build_model(model_name, tuple(info["in_shape"]), info["num_classes"]), init)
    example = torch.rand(2, *info["in_shape"])  # batch 2: train-mode BatchNorm needs more than one example
    return BoundedClassifier(model, example, device=device, mean=info["mean"], std=info["std"])


def build_hooks(cfg: DictConfig, num_examples: int, device) -> tuple[WeightedRobustLoss, AutoEpsScheduler]:
    criterion = WeightedRobustLoss(gamma=cfg.reweight.gamma, alpha=cfg.reweight.alpha)
    base_scheduler = instantiate(cfg.schedule.eps_scheduler)
    return criterion, AutoEpsScheduler(base_scheduler, num_examples, maxoff=cfg.autoeps.maxoff, device=device)


def build_regularizer(cfg: DictConfig) -> Optional[WarmupRegularizer]:
    """Shi et al.'s warm-up regulariser for ``regularizer=shi``; None for ``regularizer=none``."""
    reg = cfg.regularizer
    if reg.name == "none":
        return None
    if reg.name != "shi":
        raise ValueError(f"bad config value regularizer.name={reg.name!r}: one of ['none', 'shi']")
    for key, ok, allowed in (("tol", reg.tol > 0, "a number > 0"), ("lambda", reg["lambda"] >= 0, "a number >= 0")):
        if not ok:
            raise ValueError(f"bad config value regularizer.{key}={reg[key]!r}: {allowed}")
    return WarmupRegularizer(tol=reg.tol, lam=reg["lambda"])


def build_optimization(cfg: DictConfig, classifier: BoundedClassifier):
    optimizer = instantiate(cfg.optimizer)(classifier.parameters())
    lr_scheduler = instantiate(cfg.schedule.lr_scheduler)(optimizer)
    return optimizer, lr_scheduler


def classifier_from_checkpoint(path, device=None) -> tuple[BoundedClassifier, DictConfig]:
    """The classifier of a saved run, in eval mode, and that run's config."""
    state = checkpoint.load(path)
    for key in ("model", "config", "data_info"):
        if key not in state:
            raise ValueError(f"{path} is not a lirpa_reweight checkpoint (no {key!r} entry)")
    run_cfg = OmegaConf.create(state["config"])
    classifier = build_classifier(run_cfg.model.name, state["data_info"], device=resolve_device(device))
    classifier.model.load_state_dict(state["model"])
    return classifier.eval(), run_cfg


def run_directory(cfg: DictConfig) -> Path:
    return Path(cfg.run_dir).expanduser().resolve()
