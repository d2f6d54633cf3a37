"""The one reader of a training config: :func:`read_config` checks it and turns it into a :class:`RunSpec` of plain
values and cheap objects; :func:`build_run` makes the rest (data, model, hooks, optimizer) from the spec.

Each value is checked once, by what uses it: the table (:mod:`.config_table`) for keys no object of ours receives,
the objects' own constructors for the rest, their :class:`~lirpa_reweight.errors.ArgumentError` re-labelled here
with the config key. Everything :func:`read_config` does is cheap, so a bad value is refused before any data is
read or any file written. The trainer, the evaluation and the run bookkeeping take what is built here.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from .. import methods
from ..core.autoeps import AutoEpsScheduler
from ..core.bounds import BoundedClassifier
from ..core.device import resolve_device
from ..core.reweight import WeightedRobustLoss
from ..data.datasets import build_dataset, dataset_info
from ..errors import ArgumentError, ConfigError
from ..evaluation.plan import AbcrownOptions, AttackOptions, options_from_config
from ..evaluation.plan import check_options as check_evaluation_options
from ..fast.ibp_init import apply_init, initializer
from ..fast.regularizers import WarmupRegularizer
from ..models import build_model, model_builder, relu_units
from . import checkpoint, config_table, distributed
from .divergence import DivergenceMonitor
from .run_state import RunState
from .trainer import Trainer

log = logging.getLogger(__name__)

#: What ``regularizer.name`` may say: no warm-up regulariser, or Shi et al.'s.
REGULARIZERS = ("none", "shi")


@contextlib.contextmanager
def config_key(prefix: str, names: Optional[dict] = None):
    """Re-label an object's :class:`ArgumentError` with its config key (``prefix`` + the argument's name)."""
    try:
        yield
    except ConfigError:
        raise
    except ArgumentError as error:
        raise error.as_config_error(prefix, names) from None


# --- the spec: plain values and cheap objects ------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """Which data set, where, and how much of it."""

    name: str
    root: Optional[str]
    download: bool
    augment: bool
    num_train: Optional[int]
    num_test: Optional[int]
    in_shape: tuple
    num_classes: int
    data_seed: int

    @classmethod
    def from_config(cls, data: dict) -> "DataSpec":
        return cls(data["name"], data.get("root"), data.get("download", True), data.get("augment", False),
                   data.get("num_train"), data.get("num_test"), tuple(data.get("in_shape", (1, 28, 28))),
                   data.get("num_classes", 10), data.get("data_seed", 0))

    def dataset(self, train: bool):
        """The training or test split, whole (loaders take the prefix they use)."""
        synthetic = dict(in_shape=self.in_shape, num_classes=self.num_classes, seed=self.data_seed,
                         num_examples=self.num_train if train else self.num_test)
        return build_dataset(self.name, root=self.root, train=train, augment=self.augment and train,
                             download=self.download, **(synthetic if self.name == "synthetic" else {}))


@dataclass(frozen=True)
class LoaderSpec:
    """Batch sizes and DataLoader options (workers and pinning: null chooses by device)."""

    batch_size: int
    eval_batch_size: int
    workers: Optional[int]
    pin_memory: Optional[bool]

    def options(self, device: torch.device, group=None) -> dict:
        ranks_per_node = distributed.environment().local_world_size if group is not None else 1
        workers = distributed.default_workers(device, ranks_per_node) if self.workers is None else self.workers
        return dict(num_workers=workers, pin_memory=device.type == "cuda" if self.pin_memory is None
                    else bool(self.pin_memory))


@dataclass(frozen=True)
class EvaluationSpec:
    """The final evaluation: verifiers, attack, and the size rule of full CROWN."""

    eps: float
    methods: tuple
    pgd_steps: int
    crown_max_relu_units: int
    alpha_crown_iterations: int
    attack: AttackOptions
    abcrown: AbcrownOptions
    num_examples: Optional[int]  # the first N test examples (None: data.num_test, or all)
    examples_log: bool  # write (and resume from) run_dir/final_examples.jsonl


@dataclass(frozen=True)
class TrainerSpec:
    """How the trainer runs: epochs, checkpoints, the clean-loss ramp, clipping, the divergence guard."""

    epochs: int
    checkpoint_every: int
    stop_after_epochs: Optional[int]
    val_examples: Optional[int]
    progress: bool
    deterministic: bool
    grad_clip: Optional[float]
    clean_metric_every: int
    divergence_factor: Optional[float]
    kappa_start: float
    kappa_end: float
    eps_train: float


@dataclass
class RunSpec:
    """A checked training config: what :func:`build_run`, the trainer and the run bookkeeping need, nothing more."""

    config: dict  # the resolved config, as config.yaml and checkpoints record it
    seed: int
    run_dir: Path
    resume: bool
    device: torch.device
    data: DataSpec
    loader: LoaderSpec
    trainer: TrainerSpec
    evaluation: EvaluationSpec
    model_name: str
    init: str
    gamma: float  # 0 when re-weighting is off
    alpha: float
    maxoff: float  # 0 when auto eps is off
    method: object  # the training method (built once, here)
    regularizer: Optional[WarmupRegularizer]
    eps_scheduler: dict  # hydra.utils.instantiate targets (their constructors are not ours: the table checks them)
    optimizer: dict
    lr_scheduler: dict
    lr_hint: str  # what the divergence error suggests
    objectives: tuple


def as_dict(cfg) -> dict:
    """A plain, resolved dict of a Hydra config (Hydra's own ``hydra`` node left out)."""
    return config_table.as_container(cfg)


def read_config(cfg) -> RunSpec:
    """Check a composed training config (every value, before any work) and read it into a :class:`RunSpec`."""
    config = as_dict(cfg)
    config_table.check_train_config(config)
    reweight, autoeps, bound, reg = config["reweight"], config["autoeps"], dict(config["bound"]), config["regularizer"]
    with config_key("model"):
        model_builder(config["model"]["name"])
        initializer(config["model"]["init"])
    with config_key("reweight"):
        WeightedRobustLoss.check_hyper_parameters(reweight["gamma"], reweight["alpha"])
    with config_key("autoeps"):
        AutoEpsScheduler.check_maxoff(autoeps["maxoff"])
    with config_key("bound"):
        method = methods.build_method(bound.pop("method"), **bound)
    with config_key("regularizer", names={"lam": "lambda"}):
        regularizer = _regularizer(dict(reg))
    with config_key("eval"):
        check_evaluation_options(config["eval"]["methods"], config["eval"]["alpha_crown_iterations"])
        attack, abcrown = options_from_config(config["eval"])
    with config_key("trainer", names={"factor": "divergence_factor"}):
        DivergenceMonitor.check_factor(config["trainer"]["divergence_factor"])
    schedule, trainer, evaluation = config["schedule"], config["trainer"], config["eval"]
    if autoeps["enabled"] and autoeps["maxoff"] > schedule["eps_train"]:
        log.warning("autoeps.maxoff=%g is larger than schedule.eps_train=%g: an example with a margin below "
                    "-eps_train/maxoff gets an offset above eps_base, so its eps is clipped to 0 (it trains on "
                    "clean data only); the paper uses maxoff 0.15 for eps_train 0.4 on MNIST",
                    autoeps["maxoff"], schedule["eps_train"])
    spec = RunSpec(
        config=config, seed=config["seed"], run_dir=Path(config["run_dir"]).expanduser().resolve(),
        resume=trainer["resume"], device=resolve_device(trainer["device"]),
        data=DataSpec.from_config(config["data"]),
        loader=LoaderSpec(trainer["batch_size"], evaluation["batch_size"], trainer["workers"], trainer["pin_memory"]),
        trainer=TrainerSpec(trainer["epochs"], trainer["checkpoint_every"], trainer["stop_after_epochs"],
                            trainer["val_examples"], trainer["progress"], trainer["deterministic"],
                            trainer["grad_clip"], trainer["clean_metric_every"], trainer["divergence_factor"],
                            schedule["kappa_start"], schedule["kappa_end"], schedule["eps_train"]),
        evaluation=EvaluationSpec(schedule["eps_eval"], tuple(evaluation["methods"]), evaluation["pgd_steps"],
                                  evaluation["crown_max_relu_units"], evaluation["alpha_crown_iterations"],
                                  attack, abcrown, evaluation["num_examples"], evaluation["examples_log"]),
        model_name=config["model"]["name"], init=config["model"]["init"],
        gamma=reweight["gamma"] if reweight["enabled"] else 0.0, alpha=reweight["alpha"],
        maxoff=autoeps["maxoff"] if autoeps["enabled"] else 0.0,
        method=method, regularizer=regularizer, eps_scheduler=schedule["eps_scheduler"],
        optimizer=config["optimizer"], lr_scheduler=schedule["lr_scheduler"],
        lr_hint=f"lower schedule.lr (now {schedule['lr']:g}; optimizer.lr follows it), or ramp eps more slowly "
                "(schedule.eps_scheduler)",
        objectives=tuple(config["objectives"]))
    _check_some_verifier_runs(spec)
    return spec


def _regularizer(options: dict) -> Optional[WarmupRegularizer]:
    name = options.pop("name")
    if name not in REGULARIZERS:
        raise ArgumentError("name", name, f"one of {list(REGULARIZERS)}")
    unknown = sorted(set(options) - {"tol", "lambda"})
    if unknown:
        raise ArgumentError(unknown[0], options[unknown[0]], "not an option of the regulariser; its options: tol, lambda")
    options["lam"] = options.pop("lambda")
    regularizer = WarmupRegularizer(**options)  # its values are checked whether or not it is used
    return regularizer if name == "shi" else None


def _check_some_verifier_runs(spec: RunSpec) -> None:
    """``eval.methods=[CROWN]`` on a model too large for CROWN would train for nothing: refuse it now."""
    if set(spec.evaluation.methods) != {"CROWN"}:
        return
    info = dataset_info(spec.data.name, spec.data.in_shape, spec.data.num_classes)
    units = relu_units(build_model(spec.model_name, info.in_shape, info.num_classes), torch.zeros(1, *info.in_shape))
    limit = spec.evaluation.crown_max_relu_units
    if units > limit:
        raise ConfigError("eval.methods", list(spec.evaluation.methods),
                          f"CROWN alone would be skipped: {spec.model_name} has {units} ReLU units per example, "
                          f"above eval.crown_max_relu_units={limit}; add IBP or CROWN-IBP, or raise the limit")


# --- the run: data, model, hooks, optimizer ----------------------------------------------------------------------

@dataclass
class Run:
    """Everything one training run is made of, built from its :class:`RunSpec`."""

    state: RunState  # the objects a checkpoint saves (classifier, optimizer, schedulers, hooks, monitor)
    method: object
    regularizer: Optional[WarmupRegularizer]
    epoch_loader: Callable[[int], DataLoader]  # epoch -> its shuffled training batches
    val_loader: DataLoader
    test_loader: Callable[[], DataLoader]  # the final evaluation's batches (built when needed)
    batches_per_epoch: int


def build_run(spec: RunSpec, device: torch.device, group=None) -> Run:
    """Seed, then build the data, the classifier, the hooks and the optimizer, in the order that fixes the run's
    random numbers. Refuses an eps ramp that auto_LiRPA's scheduler cannot run."""
    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(spec.trainer.deterministic, warn_only=True)
    dataset = spec.data.dataset(train=True)
    epoch_loader = _epoch_loader(spec, dataset, device, group)
    batches_per_epoch = len(epoch_loader(0))
    eps_scheduler = instantiate(spec.eps_scheduler)
    check_eps_ramp(eps_scheduler, batches_per_epoch, spec.eps_scheduler.get("opt_str"))
    info = data_info(dataset)
    # Input checks deferred to the epoch's logging point: the step never waits for the device.
    classifier = build_classifier(spec.model_name, info, device=device, sync_checks=False, init=spec.init,
                                  loss_fusion=getattr(spec.method, "loss_fusion", False))
    criterion = WeightedRobustLoss(gamma=spec.gamma, alpha=spec.alpha, process_group=group, sync_checks=False)
    autoeps = AutoEpsScheduler(eps_scheduler, len(dataset), maxoff=spec.maxoff, device=device,
                               process_group=group, sync_checks=False)
    autoeps.set_epoch_length(batches_per_epoch)
    optimizer = instantiate(spec.optimizer)(classifier.parameters())
    lr_scheduler = instantiate(spec.lr_scheduler)(optimizer)
    monitor = DivergenceMonitor(spec.trainer.divergence_factor, device=device, process_group=group,
                                hint=spec.lr_hint)
    state = RunState(classifier, optimizer, lr_scheduler, criterion, autoeps, monitor, info, spec.config)
    return Run(state, spec.method, spec.regularizer, epoch_loader,
               val_loader=test_loader(spec.data, spec.loader, device, spec.trainer.val_examples, group=group),
               test_loader=lambda: test_loader(spec.data, spec.loader, device, spec.evaluation.num_examples,
                                               group=group),
               batches_per_epoch=batches_per_epoch)


def build_trainer(spec: RunSpec, run: Run, group=None) -> Trainer:
    """The trainer of ``run``: its objects, with the spec's ramp, clipping and guard."""
    state = run.state
    return Trainer(state.classifier, run.method, state.criterion, state.autoeps, state.optimizer,
                   eps_train=spec.trainer.eps_train, kappa=(spec.trainer.kappa_start, spec.trainer.kappa_end),
                   regularizer=run.regularizer, grad_clip=spec.trainer.grad_clip, monitor=state.monitor,
                   process_group=group, clean_metric_every=spec.trainer.clean_metric_every)


def _subset(dataset, num_examples: Optional[int]):
    # A prefix subset keeps every example's dataset index, so per-example state stays keyed correctly.
    if num_examples is None or num_examples >= len(dataset):
        return dataset
    return Subset(dataset, range(num_examples))


def _epoch_loader(spec: RunSpec, dataset, device, group) -> Callable[[int], DataLoader]:
    """Batches of trainer.batch_size (the GLOBAL batch: each rank loads its slice of it). The order of epoch ``e``
    depends only on (seed, e), so a resumed run sees the same batches."""
    dataset = _subset(dataset, spec.data.num_train)
    options = spec.loader.options(device, group)

    def loader(epoch: int) -> DataLoader:
        generator = torch.Generator()
        generator.manual_seed(spec.seed * 100003 + epoch)
        sampler = distributed.GlobalBatchSampler(len(dataset), spec.loader.batch_size, generator,
                                                 rank=distributed.rank(group),
                                                 world_size=distributed.world_size(group))
        return DataLoader(dataset, batch_sampler=sampler, generator=generator, **options)

    return loader


def test_loader(data: DataSpec, loader: LoaderSpec, device, num_examples: Optional[int] = None,
                batch_size: Optional[int] = None, group=None) -> DataLoader:
    """The first ``num_examples`` (default ``data.num_test``; None: all) of the test split; under DDP each rank
    takes its contiguous part, and the counts are summed over ranks."""
    dataset = data.dataset(train=False)
    dataset = _subset(dataset, num_examples if num_examples is not None else data.num_test)
    if group is not None:
        dataset = Subset(dataset, distributed.shard(len(dataset), group))
    return DataLoader(dataset, batch_size=batch_size or loader.eval_batch_size, shuffle=False,
                      **loader.options(resolve_device(device), group))


def check_eps_ramp(base_scheduler, batches_per_epoch: int, opt_str: Optional[str]) -> None:
    """Refuse an eps ramp that auto_LiRPA's ``SmoothedScheduler`` would divide by zero on at its first batch:
    its exponential part needs at least one batch before its mid point and its linear part one after."""
    from auto_LiRPA.eps_scheduler import SmoothedScheduler

    if not isinstance(base_scheduler, SmoothedScheduler):
        return
    ramp = base_scheduler.schedule_length * batches_per_epoch
    mid = int(ramp * base_scheduler.mid_point)
    if not 0 < mid < ramp:
        raise ConfigError(
            "schedule.eps_scheduler.opt_str", opt_str,
            f"with {batches_per_epoch} batches per epoch its ramp of length*batches = {ramp} batches puts the mid "
            f"point at batch int({ramp}*mid) = {mid}; SmoothedScheduler needs 0 < that < {ramp} (raise length or "
            "mid, keep mid below 1, or use smaller batches)")


def data_info(dataset) -> dict:
    """Input shape, class count and normalisation of an indexed data set, as plain values."""
    info = dataset.info
    return dict(in_shape=list(info.in_shape), num_classes=int(info.num_classes),
                mean=None if info.mean is None else list(info.mean), std=None if info.std is None else list(info.std))


def build_classifier(model_name: str, info: dict, device=None, sync_checks: bool = True,
                     init: str = "default", loss_fusion: bool = False) -> BoundedClassifier:
    model = apply_init(build_model(model_name, tuple(info["in_shape"]), info["num_classes"]), init)
    example = torch.rand(2, *info["in_shape"])  # batch 2: train-mode BatchNorm needs more than one example
    return BoundedClassifier(model, example, device=device, mean=info["mean"], std=info["std"],
                             sync_checks=sync_checks, loss_fusion=loss_fusion)


# --- a saved run -------------------------------------------------------------------------------------------------

@dataclass
class SavedRun:
    """A checkpoint's classifier (in eval mode) and what it was trained on."""

    classifier: BoundedClassifier
    config: dict
    data: DataSpec
    eval_batch_size: int
    eps_eval: float


def load_saved_run(path, device=None) -> SavedRun:
    """The classifier of a saved run (any checkpoint format: only the model and its data are read)."""
    state = checkpoint.load(path)
    for key in ("model", "config", "data_info"):
        if key not in state:
            raise checkpoint.CheckpointError(f"{path} is not a lirpa_reweight checkpoint (no {key!r} entry)")
    config = state["config"]
    classifier = build_classifier(config["model"]["name"], state["data_info"], device=resolve_device(device))
    classifier.model.load_state_dict(state["model"])
    return SavedRun(classifier.eval(), config, DataSpec.from_config(config["data"]),
                    config.get("eval", {}).get("batch_size", 500), config["schedule"]["eps_eval"])


def yaml_of(config) -> str:
    """A config (DictConfig or dict) as YAML."""
    return OmegaConf.to_yaml(config if isinstance(config, DictConfig) else OmegaConf.create(config))
