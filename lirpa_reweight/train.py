"""Certified training with the two hooks: ``python -m lirpa_reweight.train [+experiment=NAME] [key=value ...]``.

One step (see DESIGN.md): per-example eps from AutoEpsScheduler -> margin lower bounds from
BoundedClassifier -> eq. 6 margins update the offsets -> WeightedRobustLoss -> optimizer step; the epoch of
such steps is ``loop.train_epoch``. This module composes: run directory, checkpoints, epochs, evaluation.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.contrib.logging import logging_redirect_tqdm

from . import checkpoint, distributed, recipe, rundir
from .rundir import run_dirname  # noqa: F401  (re-exported; registered as a resolver in conf/)
from .bounds import resolve_device
from .divergence import DivergenceMonitor, require_finite_parameters
from .evaluate import evaluate_classifier
from .loop import EpochMeter, ramp_progress, schedule_factors, train_epoch  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def save_run_state(path: Path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best,
                   monitor, rotate=False):
    """Save the run's state to ``path`` (keeping the previous file as ``path.prev`` when ``rotate``)."""
    require_finite_parameters(classifier.model, f"checkpoint {path} of epoch {epoch}")
    save = checkpoint.save_rotating if rotate else checkpoint.save_atomically
    save({
        "epoch": epoch,
        "model": classifier.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "criterion": criterion.state_dict(),
        "autoeps": autoeps.state_dict(),
        "rng": checkpoint.rng_state(),
        "best": best,
        "divergence": monitor.state_dict(),
        "data_info": info,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, path)


def _check_data_matches(state: dict, info: dict, path: Path) -> None:
    if state["data_info"] != info:
        raise ValueError(f"cannot resume from {path}: its data shape/normalisation {state['data_info']} "
                         f"differ from this run's {info}")


def train(cfg: DictConfig, hydra_files: Optional[dict] = None) -> dict:
    """Train, checkpoint every epoch, evaluate at the end; returns the final metrics (also in final.json).

    The run directory is locked for the run. ``config.yaml`` and ``hydra_files`` (path in the run directory ->
    text, e.g. ``.hydra/overrides.yaml``) are written only once the run may go ahead: a refused resume leaves the
    directory as it was. Under torchrun or a multi-task SLURM step every rank runs this; rank 0 alone holds the
    lock and writes files.
    """
    recipe.validate(cfg)
    env, group = distributed.setup(resolve_device(cfg.trainer.device))
    try:
        run_dir = recipe.run_directory(cfg)
        device = distributed.rank_device(resolve_device(cfg.trainer.device), env)
        if not distributed.is_main(group):
            logging.getLogger().setLevel(logging.WARNING)  # one log: the other ranks report warnings and errors
            return _train(cfg, run_dir, hydra_files or {}, device, group)
        run_dir.mkdir(parents=True, exist_ok=True)
        with rundir.RunLock(run_dir):
            return _train(cfg, run_dir, hydra_files or {}, device, group)
    finally:
        distributed.teardown(group)


def _load_resume_state(cfg: DictConfig, run_dir: Path, device) -> Optional[dict]:
    """The checkpoint to continue from (last.pt, or last.pt.prev when last.pt is damaged), checked against this
    run's config; None for a fresh start."""
    last_path = run_dir / "last.pt"
    if not (last_path.exists() or checkpoint.previous_path(last_path).exists()):
        if cfg.trainer.resume:
            log.warning("trainer.resume=true but %s does not exist: starting from scratch", last_path)
        return None
    if not cfg.trainer.resume:
        log.warning("%s holds a previous run: starting from scratch and overwriting it "
                    "(trainer.resume=true continues it instead)", run_dir)
        return None
    state, path = checkpoint.load_with_fallback(last_path, map_location=device)
    rundir.check_resume_config(state["config"], OmegaConf.to_container(cfg, resolve=True), state["epoch"], path)
    state["path"] = path
    return state


def _claim_run_directory(cfg: DictConfig, run_dir: Path, state: Optional[dict], hydra_files: dict,
                         world_size: int) -> None:
    """The checks passed: record this run's config, and leave only the files it stands behind."""
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["world_size"] = world_size  # how many ranks trained it (the run's numbers are the same otherwise)
    rundir.write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(saved)))
    for name, text in hydra_files.items():
        rundir.write_text_atomically(run_dir / name, text)
    last_path, metrics_path = run_dir / "last.pt", run_dir / "metrics.jsonl"
    if state is None:
        rundir.write_text_atomically(metrics_path, "")
        for stale in ("last.pt", "last.pt.prev", "best.pt", "final.json"):  # a previous run's files must not
            (run_dir / stale).unlink(missing_ok=True)                       # pass for this one's
        return
    if state["path"] != last_path:  # last.pt was damaged: keep it aside, the good copy becomes last.pt
        last_path.replace(run_dir / "last.pt.damaged")
        checkpoint.copy_atomically(state["path"], last_path)
    # Drop metric lines of epochs after the checkpoint (an interrupted epoch's partial record).
    rundir.keep_metrics_up_to(metrics_path, state["epoch"])
    (run_dir / "final.json").unlink(missing_ok=True)  # trainer.epochs grew: the old one no longer describes the run


def _train(cfg: DictConfig, run_dir: Path, hydra_files: dict, device: torch.device, group) -> dict:
    main = distributed.is_main(group)
    world_size = distributed.world_size(group)
    last_path, best_path, metrics_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    final_path = run_dir / "final.json"
    state = _load_resume_state(cfg, run_dir, device)
    if state is not None and state["epoch"] >= cfg.trainer.epochs and final_path.is_file():
        log.info("%s has finished (epoch %d, final.json written): nothing to train, final.json kept", run_dir,
                 state["epoch"])
        return json.loads(final_path.read_text())
    monitor = DivergenceMonitor(cfg.trainer.divergence_factor, device=device, process_group=group,
                                hint=f"lower schedule.lr (now {cfg.schedule.lr:g}; optimizer.lr follows it), or "
                                     "ramp eps more slowly (schedule.eps_scheduler)")
    distributed.barrier(group)  # every rank has read its checkpoint before rank 0 tidies the directory
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)

    dataset = recipe.train_dataset(cfg)
    batches_per_epoch = len(recipe.train_loader(cfg, dataset, torch.Generator(), group))
    recipe.check_eps_ramp(cfg, batches_per_epoch)  # before the run directory says that this run started
    if main:
        _claim_run_directory(cfg, run_dir, state, hydra_files, world_size)
    info = recipe.data_info(dataset)
    # Input checks deferred to the epoch's logging point: the step never waits for the device.
    classifier = recipe.build_classifier(cfg.model.name, info, device=device, sync_checks=False, init=cfg.model.init)
    criterion, autoeps = recipe.build_hooks(cfg, num_examples=len(dataset), device=device, process_group=group,
                                            sync_checks=False)
    optimizer, lr_scheduler = recipe.build_optimization(cfg, classifier)
    regularizer = recipe.build_regularizer(cfg)
    val_loader = recipe.test_loader(cfg, num_examples=cfg.trainer.val_examples, group=group)
    if state is not None:
        _check_data_matches(state, info, state["path"])

    start_epoch, best = 1, {"epoch": None, "val_verified_error": math.inf}
    # Bars only on a terminal (in a log file they would garble its lines), and from rank 0 only.
    show_progress = cfg.trainer.progress and main and sys.stderr.isatty()
    if state is not None:
        classifier.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        criterion.load_state_dict(state["criterion"])
        autoeps.load_state_dict(state["autoeps"])
        monitor.load_state_dict(state.get("divergence", {}))
        checkpoint.set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("resumed from %s at epoch %d", state["path"], state["epoch"])
    # Same weights on every rank (seeded alike already; this also covers a model with random buffers).
    distributed.broadcast_state(classifier, group)

    loader_generator = torch.Generator()
    autoeps.set_epoch_length(batches_per_epoch)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch) if main else None
    for epoch in range(start_epoch, cfg.trainer.epochs + 1):
        started = time.time()
        # Shuffling order depends only on (seed, epoch), so a resumed run sees the same batches.
        loader_generator.manual_seed(cfg.seed * 100003 + epoch)
        loader = recipe.train_loader(cfg, dataset, loader_generator, group)
        monitor.start_epoch()
        try:
            stats = train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch, show_progress,
                                monitor, group=group, regularizer=regularizer)
        except Exception as error:  # e.g. a hook's own NaN check: say so if training diverged
            monitor.check_failure(epoch, error, classifier.model)
            raise
        monitor.check(epoch)
        lr = optimizer.param_groups[0]["lr"]
        lr_scheduler.step()
        distributed.broadcast_state(classifier, group)  # rank 0's BatchNorm statistics on every rank
        val = evaluate_classifier(classifier, val_loader, cfg.schedule.eps_eval, methods=["IBP"], pgd_steps=0,
                                  progress=False, group=group)
        classifier.check(f"epoch {epoch} (validation)")
        record = {"epoch": epoch, **stats, "lr": lr, "val_clean_error": val["clean_error"],
                  "val_verified_error": val["verified_error"], "seconds": round(time.time() - started, 2),
                  "world_size": world_size}
        if main:
            rundir.append_metrics(metrics_path, record)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    writer.add_scalar(key, value, epoch)
        log.info("epoch %d/%d loss %.4f clean err %.4f verified err (IBP, eps %.4g) %.4f | eps_base %.4g "
                 "mean weight %.3f mean offset %.4g | val verified err %.4f | %.1fs", epoch, cfg.trainer.epochs,
                 stats["loss"], stats["clean_error"], stats["eps_base"], stats["verified_error"], stats["eps_base"],
                 stats["mean_weight"], stats["autoeps_mean_offset"], val["verified_error"], record["seconds"])
        # "Best" only once eps_train is reached: earlier epochs certify a smaller radius trivially well.
        is_best = autoeps.reached_max_eps() and val["verified_error"] <= best["val_verified_error"]
        if is_best:
            best = {"epoch": epoch, "val_verified_error": val["verified_error"]}
        is_checkpoint = epoch % cfg.trainer.checkpoint_every == 0 or epoch == cfg.trainer.epochs
        if main and is_checkpoint:
            save_run_state(last_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best,
                           monitor, rotate=True)
            if is_best:
                checkpoint.copy_atomically(last_path, best_path)
        elif main and is_best:
            save_run_state(best_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best,
                           monitor)
        if cfg.trainer.stop_after_epochs is not None and epoch >= cfg.trainer.stop_after_epochs:
            log.info("stopping after epoch %d as trainer.stop_after_epochs asks; resume with trainer.resume=true",
                     epoch)
            if writer is not None:
                writer.close()
            return {"stopped_at_epoch": epoch}
    if writer is not None:
        writer.close()
    if main and not best_path.exists() and last_path.exists():
        # eps_train never reached (a short run): the last epoch is the best we have.
        checkpoint.copy_atomically(last_path, best_path)

    log.info("final evaluation at eps %g on the test set", cfg.schedule.eps_eval)
    final = evaluate_classifier(classifier, recipe.test_loader(cfg, group=group), cfg.schedule.eps_eval,
                                methods=list(cfg.eval.methods), pgd_steps=cfg.eval.pgd_steps,
                                crown_max_relu_units=cfg.eval.crown_max_relu_units,
                                alpha_crown_iterations=cfg.eval.alpha_crown_iterations, progress=show_progress,
                                crown_limit_key="eval.crown_max_relu_units", group=group)
    final.update(epochs=cfg.trainer.epochs, best_epoch=best["epoch"], world_size=world_size)
    if main:
        rundir.write_text_atomically(final_path, json.dumps(final, indent=2))
    log.info("final: clean err %.4f, PGD err %.4f, verified err %s %s%s", final["clean_error"],
             final["pgd_error"], final["verified_error"], final["verified_error_by_method"],
             f" (skipped: {final['skipped']})" if final["skipped"] else "")
    return final


def _hydra_record(cfg: DictConfig) -> dict:
    """What Hydra writes to .hydra/ (conf/config.yaml turns that off so that train() writes it after its checks)."""
    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))  # a writable copy
    hydra_cfg.hydra.output_subdir = ".hydra"  # where it is now, as Hydra would have recorded it
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg), ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


# final.json entries a sweeper may minimise (the `objectives` config key).
OBJECTIVES = ("clean_error", "pgd_error", "verified_error")


def sweep_objectives(cfg: DictConfig) -> list[str]:
    """The `objectives` key checked: a non-empty list drawn from OBJECTIVES (default [verified_error])."""
    objectives = cfg.get("objectives", ["verified_error"])
    names = list(objectives) if OmegaConf.is_list(objectives) or isinstance(objectives, (list, tuple)) else None
    if not names or any(name not in OBJECTIVES for name in names):
        raise ValueError(f"bad config value objectives={objectives!r}: a non-empty list drawn from {list(OBJECTIVES)}")
    return names


def objective_values(objectives: list[str], result: dict):
    """What a sweeper receives: one float for one objective, else a list (Optuna's multi-objective study);
    NaN for a value the run did not produce (stopped before its final evaluation, or PGD off)."""
    values = [float(v) if isinstance(v := result.get(name), (int, float)) else math.nan for name in objectives]
    return values[0] if len(values) == 1 else values


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="config")
def main(cfg: DictConfig):
    """Hydra entry point; returns the final errors named by `objectives` (default: verified error) so sweepers
    (Optuna) can minimise them."""
    objectives = sweep_objectives(cfg)  # checked before training, not after it
    try:
        with logging_redirect_tqdm():  # on a terminal, log lines print above the bars, not into them
            result = train(cfg, hydra_files=_hydra_record(cfg))
    except Exception:
        log.exception("training failed")  # the traceback goes to train.log too, not only to the terminal
        raise
    return objective_values(objectives, result)


if __name__ == "__main__":
    main()
