"""One training run, start to end: check the config, take the run directory, resume or start, train the epochs
(validation, metrics, checkpoints), evaluate on the test set. :func:`train` is what ``python -m
lirpa_reweight.train`` calls (the Hydra ``main`` lives in ``lirpa_reweight/train.py``); each step is a function
below that fits one screen.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.tensorboard import SummaryWriter

from ..evaluation.examples_log import ExamplesLog, model_fingerprint
from ..evaluation.plan import make_plan
from ..evaluation.robustness import evaluate_classifier
from ..evaluation.summary import format_summary
from . import checkpoint, distributed, rundir
from .build import Run, RunSpec, build_run, build_trainer, read_config
from .run_state import Progress, claim_run_directory, find_resume_checkpoint
from .trainer import Trainer

log = logging.getLogger(__name__)


def train(cfg, hydra_files: Optional[dict] = None) -> dict:
    """Train, checkpoint, evaluate at the end; returns the final metrics (also in final.json).

    The run directory is locked for the run. ``config.yaml`` and ``hydra_files`` (path in the run directory ->
    text, e.g. ``.hydra/overrides.yaml``) are written only once the run may go ahead: a refused resume leaves the
    directory as it was. Under torchrun or a multi-task SLURM step every rank runs this; rank 0 alone holds the
    lock and writes files.
    """
    spec = read_config(cfg)
    env, group = distributed.setup(spec.device)
    try:
        device = distributed.rank_device(spec.device, env)
        main = distributed.is_main(group)
        if not main:
            logging.getLogger().setLevel(logging.WARNING)  # one log: the other ranks report warnings and errors
        else:
            spec.run_dir.mkdir(parents=True, exist_ok=True)
        with rundir.RunLock(spec.run_dir) if main else nullcontext():
            return _train(spec, hydra_files or {}, device, group)
    finally:
        distributed.teardown(group)


@dataclass
class _Files:
    """Where this run writes, and whether this rank writes at all."""

    run_dir: Path
    main: bool

    def path(self, name: str) -> Path:
        return self.run_dir / name


def _train(spec: RunSpec, hydra_files: dict, device: torch.device, group) -> dict:
    files = _Files(spec.run_dir, distributed.is_main(group))
    resumed_from = find_resume_checkpoint(spec.run_dir, spec.resume, spec.config, device)
    final_path = files.path(rundir.FINAL)
    if resumed_from is not None and resumed_from[0]["epoch"] >= spec.trainer.epochs and final_path.is_file():
        log.info("%s has finished (epoch %d, final.json written): nothing to train, final.json kept", spec.run_dir,
                 resumed_from[0]["epoch"])
        return json.loads(final_path.read_text())
    distributed.barrier(group)  # every rank has read its checkpoint before rank 0 tidies the directory
    run = build_run(spec, device, group)
    if files.main:
        claim_run_directory(spec.run_dir, spec.config, hydra_files, resumed_from, distributed.world_size(group))
    progress = Progress()
    if resumed_from is not None:
        progress = run.state.restore(*resumed_from)
        log.info("resumed from %s at epoch %d", resumed_from[1], progress.epoch)
    # Same weights on every rank (seeded alike already; this also covers a model with random buffers).
    distributed.broadcast_state(run.state.classifier, group)
    progress, stopped = _fit(spec, run, progress, files, group)
    if stopped:
        return {"stopped_at_epoch": progress.epoch}
    if files.main and not files.path(rundir.BEST).exists() and files.path(rundir.LAST).exists():
        # eps_train never reached (a short run): the last epoch is the best we have.
        checkpoint.copy_atomically(files.path(rundir.LAST), files.path(rundir.BEST))
    return _final_evaluation(spec, run, progress, files, group)


def _fit(spec: RunSpec, run: Run, progress: Progress, files: _Files, group) -> tuple[Progress, bool]:
    """The epochs after ``progress``: train, validate, log, checkpoint. Returns the progress and whether the run
    stopped early (``trainer.stop_after_epochs``)."""
    state = run.state
    trainer = build_trainer(spec, run, group)
    # Bars only on a terminal (in a log file they would garble its lines), and from rank 0 only.
    show_progress = spec.trainer.progress and files.main and sys.stderr.isatty()
    writer = SummaryWriter(log_dir=str(files.path("tensorboard")), purge_step=progress.epoch + 1) \
        if files.main else None
    try:
        for epoch in range(progress.epoch + 1, spec.trainer.epochs + 1):
            record = _epoch(spec, run, trainer, epoch, show_progress, group)
            if files.main:
                rundir.append_metrics(files.path(rundir.METRICS), record)
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        writer.add_scalar(key, value, epoch)
            progress = _checkpoint(spec, state, progress, epoch, record["val_verified_error"], files)
            if spec.trainer.stop_after_epochs is not None and epoch >= spec.trainer.stop_after_epochs:
                log.info("stopping after epoch %d as trainer.stop_after_epochs asks; resume with trainer.resume=true",
                         epoch)
                return progress, True
    finally:
        if writer is not None:
            writer.close()
    return progress, False


def _epoch(spec: RunSpec, run: Run, trainer: Trainer, epoch: int, show_progress: bool, group) -> dict:
    """Train one epoch, validate with IBP at eps_eval, log; returns the epoch's metrics record."""
    started = time.time()
    state = run.state
    state.monitor.start_epoch()
    try:
        stats = trainer.train_epoch(run.epoch_loader(epoch), epoch, show_progress)
    except Exception as error:  # e.g. a hook's own NaN check: say so if training diverged
        state.monitor.check_failure(epoch, error, state.classifier.model)
        raise
    state.monitor.check(epoch)
    lr = state.optimizer.param_groups[0]["lr"]
    state.lr_scheduler.step()
    distributed.broadcast_state(state.classifier, group)  # rank 0's BatchNorm statistics on every rank
    val = evaluate_classifier(state.classifier, run.val_loader, spec.evaluation.eps, methods=["IBP"], pgd_steps=0,
                              progress=False, group=group)
    state.classifier.check(f"epoch {epoch} (validation)")
    record = {"epoch": epoch, **stats, "lr": lr, "val_clean_error": val["clean_error"],
              "val_verified_error": val["verified_error"], "seconds": round(time.time() - started, 2),
              "world_size": distributed.world_size(group)}
    log.info("epoch %d/%d loss %.4f clean err %.4f verified err (IBP, eps %.4g) %.4f | eps_base %.4g "
             "mean weight %.3f mean offset %.4g | val verified err %.4f | %.1fs", epoch, spec.trainer.epochs,
             stats["loss"], stats["clean_error"], stats["eps_base"], stats["verified_error"], stats["eps_base"],
             stats["mean_weight"], stats["autoeps_mean_offset"], val["verified_error"], record["seconds"])
    return record


def _checkpoint(spec: RunSpec, state, progress: Progress, epoch: int, val_verified_error: float,
                files: _Files) -> Progress:
    """The progress after ``epoch``, saved as last.pt (every ``checkpoint_every`` epochs and at the end) and as
    best.pt when this epoch is the best so far."""
    # "Best" only once eps_train is reached: earlier epochs certify a smaller radius trivially well.
    is_best = state.autoeps.reached_max_eps() and val_verified_error <= progress.best["val_verified_error"]
    progress = Progress(epoch, {"epoch": epoch, "val_verified_error": val_verified_error} if is_best
                        else progress.best)
    if not files.main:
        return progress
    last, best = files.path(rundir.LAST), files.path(rundir.BEST)
    if epoch % spec.trainer.checkpoint_every == 0 or epoch == spec.trainer.epochs:
        state.save(last, progress, rotate=True)
        if is_best:
            checkpoint.copy_atomically(last, best)
    elif is_best:
        state.save(best, progress)
    return progress


def _final_examples_log(spec: RunSpec, run: Run, files: _Files, group) -> Optional[ExamplesLog]:
    """run_dir/final_examples.jsonl (one file per rank under DDP), resumed when it was written for these weights
    and this cascade, else started afresh."""
    ev = spec.evaluation
    if not ev.examples_log:
        return None
    name = rundir.FINAL_EXAMPLES if group is None else rundir.FINAL_EXAMPLES.replace(
        ".jsonl", f".rank{distributed.rank(group)}.jsonl")
    plan = make_plan(ev.methods, ev.attack, ev.abcrown, ev.crown_max_relu_units, ev.alpha_crown_iterations)
    header = {"model": model_fingerprint(run.state.classifier.model), "eps": ev.eps, "plan": plan.fingerprint()}
    return ExamplesLog(files.path(name), header, key="eval.examples_log", restart_on_mismatch=True)


def _final_evaluation(spec: RunSpec, run: Run, progress: Progress, files: _Files, group) -> dict:
    """Evaluate on the test set at eps_eval with the configured verifiers; write final.json; return it."""
    ev = spec.evaluation
    log.info("final evaluation at eps %g on the test set", ev.eps)
    show_progress = spec.trainer.progress and files.main and sys.stderr.isatty()
    final = evaluate_classifier(run.state.classifier, run.test_loader(), ev.eps, methods=list(ev.methods),
                                crown_max_relu_units=ev.crown_max_relu_units,
                                alpha_crown_iterations=ev.alpha_crown_iterations, progress=show_progress,
                                crown_limit_key="eval.crown_max_relu_units", group=group, attack=ev.attack,
                                abcrown=ev.abcrown, examples_log=_final_examples_log(spec, run, files, group))
    final.update(epochs=spec.trainer.epochs, best_epoch=progress.best["epoch"], world_size=distributed.world_size(group))
    if files.main:
        rundir.write_text_atomically(files.path(rundir.FINAL), json.dumps(final, indent=2))
    log.info("final evaluation (%s):\n%s", files.path(rundir.FINAL), format_summary(final))
    return final
