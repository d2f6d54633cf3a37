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

from . import checkpoint, config_checks, distributed
from .autoeps import AutoEpsScheduler
from . import methods
from .bounds import BoundedClassifier, resolve_device
from .data import build_dataset
from .init import apply_init
from .models import build_model
from .regularizers import WarmupRegularizer
from .reweight import WeightedRobustLoss

from auto_LiRPA.eps_scheduler import SmoothedScheduler  # noqa: E402  (after .bounds, which patches auto_LiRPA first)


def validate(cfg: DictConfig) -> None:
    """Refuse a bad training config before any work starts, naming the key, the value and what is allowed
    (the table of every key is in ``config_checks``)."""
    config_checks.check_train_config(cfg)
    try:
        build_method(cfg)  # the method's own checks of its bound.* options
    except ValueError as error:
        raise ValueError(f"bad config under bound (bound.method={cfg.bound.method!r}): {error}") from None


def validate_evaluate(cfg: DictConfig) -> None:
    """The same for ``python -m lirpa_reweight.evaluate``'s config."""
    config_checks.check_evaluate_config(cfg)


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


def build_classifier(model_name: str, info: dict, device=None, sync_checks: bool = True,
                     init: str = "default") -> BoundedClassifier:
    model = apply_init(build_model(model_name, tuple(info["in_shape"]), info["num_classes"]), init)
    example = torch.rand(2, *info["in_shape"])  # batch 2: train-mode BatchNorm needs more than one example
    return BoundedClassifier(model, example, device=device, mean=info["mean"], std=info["std"],
                             sync_checks=sync_checks)


def build_hooks(cfg: DictConfig, num_examples: int, device, process_group=None,
                sync_checks: bool = True) -> tuple[WeightedRobustLoss, AutoEpsScheduler]:
    """The two hooks; a group switched off (``enabled: false``) is built with its neutral value (gamma 0: equal
    weights, the plain robust loss; maxoff 0: every eps is eps_base), whatever its other keys say."""
    gamma = cfg.reweight.gamma if cfg.reweight.enabled else 0.0
    maxoff = cfg.autoeps.maxoff if cfg.autoeps.enabled else 0.0
    criterion = WeightedRobustLoss(gamma=gamma, alpha=cfg.reweight.alpha, process_group=process_group,
                                   sync_checks=sync_checks)
    base_scheduler = instantiate(cfg.schedule.eps_scheduler)
    return criterion, AutoEpsScheduler(base_scheduler, num_examples, maxoff=maxoff, device=device,
                                       process_group=process_group, sync_checks=sync_checks)


def check_eps_ramp(cfg: DictConfig, batches_per_epoch: int) -> None:
    """Refuse an eps ramp that auto_LiRPA's ``SmoothedScheduler`` would divide by zero on at its first batch:
    its exponential part needs at least one batch before its mid point and its linear part one after."""
    base_scheduler = instantiate(cfg.schedule.eps_scheduler)
    if not isinstance(base_scheduler, SmoothedScheduler):
        return
    ramp = base_scheduler.schedule_length * batches_per_epoch
    mid = int(ramp * base_scheduler.mid_point)
    if not 0 < mid < ramp:
        raise config_checks.ConfigError(
            "schedule.eps_scheduler.opt_str", cfg.schedule.eps_scheduler.opt_str,
            f"with {batches_per_epoch} batches per epoch its ramp of length*batches = {ramp} batches puts the mid "
            f"point at batch int({ramp}*mid) = {mid}; SmoothedScheduler needs 0 < that < {ramp} (raise length or "
            "mid, keep mid below 1, or use smaller batches)")


def build_method(cfg: DictConfig):
    """The training method of ``bound.method``: its options are the other ``bound.*`` keys (CROWN-IBP's beta
    ramp lives in ``schedule``)."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.bound, resolve=True).items() if k != "method"}
    if cfg.bound.method == "CROWN-IBP":
        options.update(beta_start=cfg.schedule.beta_start, beta_end=cfg.schedule.beta_end)
    return methods.build_method(cfg.bound.method, **options)


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
