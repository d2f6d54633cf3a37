"""Certified training with the two hooks: ``python -m lirpa_reweight.train [+experiment=NAME] [key=value ...]``.

One step (see DESIGN.md): per-example eps from AutoEpsScheduler -> margin lower bounds from
BoundedClassifier -> eq. 6 margins update the offsets -> WeightedRobustLoss -> optimizer step.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoint, distributed, recipe
from .bounds import resolve_device
from .evaluate import evaluate_classifier

log = logging.getLogger(__name__)



def run_dirname(overrides: str, max_length: int = 120) -> str:
    """A run directory name from Hydra's override_dirname: "default" when empty, and shortened with a
    hash when too long for a file name (the full overrides stay in .hydra/overrides.yaml)."""
    if not overrides:
        return "default"
    if len(overrides) <= max_length:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{overrides[:max_length]}...{digest}"


if not OmegaConf.has_resolver("run_dirname"):
    OmegaConf.register_new_resolver("run_dirname", run_dirname)


def schedule_factors(cfg: DictConfig, eps_base: float) -> tuple[float, float]:
    """kappa (clean-loss weight) and CROWN-IBP beta, moved linearly with the eps ramp, as in CROWN-IBP training."""
    eps_train = cfg.schedule.eps_train
    progress = min(eps_base / eps_train, 1.0) if eps_train > 0 else 1.0
    kappa = cfg.schedule.kappa_start + (cfg.schedule.kappa_end - cfg.schedule.kappa_start) * progress
    beta = cfg.schedule.beta_start + (cfg.schedule.beta_end - cfg.schedule.beta_start) * progress
    return kappa, beta


class EpochMeter:
    """Sums kept as tensors on the training device; read (one sync) once per epoch, summed over ranks."""

    def __init__(self, device, group=None):
        self.sums = torch.zeros(6, device=device)  # loss, clean loss, robust loss, clean err, verified, weight
        self.count = 0
        self.group = group

    def add(self, loss, clean_loss, robust_loss, logits, lb, y, weights, loss_weight=None):
        """``loss_weight``: what ``loss`` counts for in the epoch's mean; the batch size for one process. Under
        DDP each rank's loss is its scaled share (the ranks' mean is the global batch's loss), so it is
        global batch size / world size there."""
        batch = len(y)
        self.sums += torch.stack([
            loss.detach() * (batch if loss_weight is None else loss_weight), clean_loss.detach() * batch,
            robust_loss.detach() * batch, (logits.detach().argmax(1) != y).sum(), (lb.detach() > 0).all(1).sum(),
            weights.sum(),
        ]).to(self.sums.dtype)
        self.count += batch

    def read(self) -> dict:
        if self.group is None:
            sums, count = self.sums, max(self.count, 1)
        else:
            totals = distributed.all_reduce_sum(torch.cat([self.sums, self.sums.new_tensor([self.count])]), self.group)
            sums, count = totals[:6], totals[6].clamp(min=1)
        loss, clean, robust, clean_err, verified, weight = (sums / count).tolist()
        return dict(loss=loss, clean_loss=clean, robust_loss=robust, clean_error=clean_err,
                    verified_error=1 - verified, mean_weight=weight)


def train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch, progress=True, group=None) -> dict:
    """One epoch; ``group`` is the ranks' process group under DDP (None for one process)."""
    classifier.train()
    autoeps.train()
    autoeps.step_epoch()
    meter = EpochMeter(classifier.device, group)
    loss_weight = None
    method = cfg.bound.method
    for x, y, index in tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False):
        # index stays where the loader made it (CPU): AutoEpsScheduler checks it there without a GPU sync.
        x, y = x.to(classifier.device, non_blocking=True), y.to(classifier.device, non_blocking=True)
        autoeps.step_batch()
        eps_base = autoeps.get_eps()
        kappa, beta = schedule_factors(cfg, eps_base)
        eps = autoeps.eps(index)
        logits, lb = classifier.certify(x, y, eps, method=method, beta=beta if method == "CROWN-IBP" else None)
        loss = criterion(lb, logits, y, kappa=kappa)
        autoeps.update(index, criterion.last_margins)  # eq. 6 margins at each example's own eps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(classifier.parameters(), group)
        optimizer.step()
        with torch.no_grad():
            clean_loss = torch.nn.functional.cross_entropy(logits, y)
        # The unweighted robust CE is logged: it stays comparable across gamma.
        if group is not None:
            loss_weight = criterion.last_global_batch / distributed.world_size(group)
        meter.add(loss, clean_loss, criterion.last_robust_losses.mean(), logits, lb, y, criterion.last_weights,
                  loss_weight=loss_weight)
    stats = meter.read()
    # The deferred input checks of the step (no host sync there), read at the epoch's logging point.
    for hook in (classifier, criterion, autoeps):
        hook.check(f"epoch {epoch}")
    stats.update(eps_base=autoeps.get_eps(), kappa=kappa, beta=beta if method == "CROWN-IBP" else None,
                 **{f"autoeps_{k}": v for k, v in autoeps.stats().items()})
    return stats


def save_run_state(path: Path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best):
    checkpoint.save_atomically({
        "epoch": epoch,
        "model": classifier.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "criterion": criterion.state_dict(),
        "autoeps": autoeps.state_dict(),
        "rng": checkpoint.rng_state(),
        "best": best,
        "data_info": info,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, path)


def _check_resumable(state: dict, cfg: DictConfig, info: dict, path: Path) -> None:
    saved = state["config"]
    for key in ("model.name", "data.name"):
        group, field = key.split(".")
        if saved[group][field] != cfg[group][field]:
            raise ValueError(f"cannot resume from {path}: it was trained with {key}={saved[group][field]!r}, "
                             f"this run asks for {key}={cfg[group][field]!r}")
    if state["data_info"] != info:
        raise ValueError(f"cannot resume from {path}: its data shape/normalisation {state['data_info']} "
                         f"differ from this run's {info}")


def train(cfg: DictConfig) -> dict:
    """Train, checkpoint every epoch, evaluate at the end; returns the final metrics (also in final.json).

    Under torchrun or a multi-task SLURM step every rank runs this; rank 0 alone writes files.
    """
    recipe.validate(cfg)
    env, group = distributed.setup(resolve_device(cfg.trainer.device))
    try:
        return _train(cfg, distributed.rank_device(resolve_device(cfg.trainer.device), env), group)
    finally:
        distributed.teardown(group)


def _train(cfg: DictConfig, device: torch.device, group) -> dict:
    main = distributed.is_main(group)
    world_size = distributed.world_size(group)
    if not main:  # one log: the other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    run_dir = recipe.run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)

    dataset = recipe.train_dataset(cfg)
    info = recipe.data_info(dataset)
    # Input checks deferred to the epoch's logging point: the step never waits for the device.
    classifier = recipe.build_classifier(cfg.model.name, info, device=device, sync_checks=False)
    criterion, autoeps = recipe.build_hooks(cfg, num_examples=len(dataset), device=device, process_group=group,
                                            sync_checks=False)
    optimizer, lr_scheduler = recipe.build_optimization(cfg, classifier)
    val_loader = recipe.test_loader(cfg, num_examples=cfg.trainer.val_examples, group=group)
    if main:
        saved = OmegaConf.to_container(cfg, resolve=True)
        saved["world_size"] = world_size  # how many ranks trained it (the run's numbers are the same otherwise)
        OmegaConf.save(OmegaConf.create(saved), run_dir / "config.yaml")

    start_epoch, best = 1, {"epoch": None, "val_verified_error": math.inf}
    last_path, best_path, metrics_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    if cfg.trainer.resume and last_path.exists():
        state = checkpoint.load(last_path, map_location=device)
        _check_resumable(state, cfg, info, last_path)
        classifier.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        criterion.load_state_dict(state["criterion"])
        autoeps.load_state_dict(state["autoeps"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        # Drop metric lines of epochs after the checkpoint (an interrupted epoch's partial record).
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        distributed.barrier(group)  # every rank has read last.pt and metrics.jsonl before rank 0 rewrites them
        if main:
            metrics_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["epoch"] <= state["epoch"]))
        log.info("resumed from %s at epoch %d", last_path, state["epoch"])
    else:
        if cfg.trainer.resume:
            log.warning("trainer.resume=true but %s does not exist: starting from scratch", last_path)
        elif last_path.exists():
            log.warning("%s holds a previous run: starting from scratch and overwriting it "
                        "(trainer.resume=true continues it instead)", run_dir)
        distributed.barrier(group)  # no rank still looks for last.pt when rank 0 starts afresh
        if main:
            metrics_path.write_text("")
            for stale in ("best.pt", "final.json"):  # a previous run's results must not pass for this one's
                (run_dir / stale).unlink(missing_ok=True)
    # Same weights on every rank (seeded alike already; this also covers a model with random buffers).
    distributed.broadcast_state(classifier, group)

    loader_generator = torch.Generator()
    autoeps.set_epoch_length(len(recipe.train_loader(cfg, dataset, loader_generator, group)))
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch) if main else None
    for epoch in range(start_epoch, cfg.trainer.epochs + 1):
        started = time.time()
        # Shuffling order depends only on (seed, epoch), so a resumed run sees the same batches.
        loader_generator.manual_seed(cfg.seed * 100003 + epoch)
        loader = recipe.train_loader(cfg, dataset, loader_generator, group)
        stats = train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch,
                            cfg.trainer.progress and main, group=group)
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
            with metrics_path.open("a") as file:
                file.write(json.dumps(record) + "\n")
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
            save_run_state(last_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best)
            if is_best:
                checkpoint.copy_atomically(last_path, best_path)
        elif main and is_best:
            save_run_state(best_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best)
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
                                progress=cfg.trainer.progress and main, group=group)
    final.update(epochs=cfg.trainer.epochs, best_epoch=best["epoch"], world_size=world_size)
    if main:
        (run_dir / "final.json").write_text(json.dumps(final, indent=2))
    log.info("final: clean err %.4f, PGD err %.4f, verified err %.4f %s%s", final["clean_error"],
             final["pgd_error"], final["verified_error"], final["verified_error_by_method"],
             f" (skipped: {final['skipped']})" if final["skipped"] else "")
    return final


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the final verified error so sweepers can minimise it."""
    result = train(cfg)
    return result.get("verified_error", float("nan"))


if __name__ == "__main__":
    main()
