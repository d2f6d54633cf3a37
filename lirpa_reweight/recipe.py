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

from . import checkpoint, distributed
from .autoeps import AutoEpsScheduler
from .bounds import METHODS, BoundedClassifier, resolve_device
from .data import DATASETS, build_dataset
from .models import MODELS, build_model
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


def loader_options(cfg: DictConfig, device=None, ranks_per_node: int = 1) -> dict:
    """num_workers and pin_memory: trainer.workers / trainer.pin_memory, or (null) chosen by the device and cores."""
    device = resolve_device(cfg.trainer.device if device is None else device)
    workers = cfg.trainer.get("workers")
    pin = cfg.trainer.get("pin_memory")
    return dict(num_workers=distributed.default_workers(device, ranks_per_node) if workers is None else workers,
                pin_memory=device.type == "cuda" if pin is None else bool(pin))


def test_loader(cfg: DictConfig, num_examples: Optional[int] = None, batch_size: Optional[int] = None,
                group=None) -> DataLoader:
    kwargs = dataset_kwargs(cfg.data)
    if cfg.data.name == "synthetic":
        kwargs["num_examples"] = cfg.data.num_test
    dataset = build_dataset(cfg.data.name, train=False, augment=False, **kwargs)
    limit = num_examples if num_examples is not None else cfg.data.num_test
    dataset = _subset(dataset, limit)
    if group is not None:  # each rank evaluates its contiguous part; the counts are summed over ranks
        dataset = Subset(dataset, distributed.shard(len(dataset), group))
    return DataLoader(dataset, batch_size=batch_size or cfg.eval.batch_size, shuffle=False,
                      **loader_options(cfg, ranks_per_node=_ranks_per_node(group)))


def _ranks_per_node(group) -> int:
    return distributed.environment().local_world_size if group is not None else 1


def train_loader(cfg: DictConfig, dataset, generator: torch.Generator, group=None) -> DataLoader:
    """Batches of trainer.batch_size (the GLOBAL batch: each rank loads its slice of it), shuffled by generator."""
    dataset = _subset(dataset, cfg.data.num_train)
    sampler = distributed.GlobalBatchSampler(len(dataset), cfg.trainer.batch_size, generator,
                                             rank=distributed.rank(group), world_size=distributed.world_size(group))
    return DataLoader(dataset, batch_sampler=sampler, generator=generator,
                      **loader_options(cfg, ranks_per_node=_ranks_per_node(group)))


def data_info(dataset) -> dict:
    """Input shape, class count and normalisation of an indexed data set, as plain values."""
    info = dataset.info
    return dict(in_shape=list(info.in_shape), num_classes=int(info.num_classes),
                mean=None if info.mean is None else list(info.mean), std=None if info.std is None else list(info.std))


def build_classifier(model_name: str, info: dict, device=None, sync_checks: bool = True) -> BoundedClassifier:
    model = build_model(model_name, tuple(info["in_shape"]), info["num_classes"])
    example = torch.rand(2, *info["in_shape"])  # batch 2: train-mode BatchNorm needs more than one example
    return BoundedClassifier(model, example, device=device, mean=info["mean"], std=info["std"],
                             sync_checks=sync_checks)


def build_hooks(cfg: DictConfig, num_examples: int, device, process_group=None,
                sync_checks: bool = True) -> tuple[WeightedRobustLoss, AutoEpsScheduler]:
    criterion = WeightedRobustLoss(gamma=cfg.reweight.gamma, alpha=cfg.reweight.alpha, process_group=process_group,
                                   sync_checks=sync_checks)
    base_scheduler = instantiate(cfg.schedule.eps_scheduler)
    return criterion, AutoEpsScheduler(base_scheduler, num_examples, maxoff=cfg.autoeps.maxoff, device=device,
                                       process_group=process_group, sync_checks=sync_checks)


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
