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

from . import checkpoint, recipe
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
    """Sums kept as tensors on the training device; read (one sync) once per epoch."""

    def __init__(self, device):
        self.sums = torch.zeros(6, device=device)  # loss, clean loss, robust loss, clean err, verified, weight
        self.count = 0

    def add(self, loss, clean_loss, robust_loss, logits, lb, y, weights):
        batch = len(y)
        self.sums += torch.stack([
            loss.detach() * batch, clean_loss.detach() * batch, robust_loss.detach() * batch,
            (logits.detach().argmax(1) != y).sum(), (lb.detach() > 0).all(1).sum(), weights.sum(),
        ]).to(self.sums.dtype)
        self.count += batch

    def read(self) -> dict:
        loss, clean, robust, clean_err, verified, weight = (self.sums / max(self.count, 1)).tolist()
        return dict(loss=loss, clean_loss=clean, robust_loss=robust, clean_error=clean_err,
                    verified_error=1 - verified, mean_weight=weight)


def train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch, progress=True,
                regularizer=None) -> dict:
    classifier.train()
    autoeps.train()
    autoeps.step_epoch()
    meter = EpochMeter(classifier.device)
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
        if regularizer is not None:  # Shi et al.'s warm-up terms, from the bounds certify just computed
            loss = loss + regularizer(classifier.bounded, eps_base, autoeps.get_max_eps())
        autoeps.update(index, criterion.last_margins)  # eq. 6 margins at each example's own eps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.trainer.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        with torch.no_grad():
            clean_loss = torch.nn.functional.cross_entropy(logits, y)
        # The unweighted robust CE is logged: it stays comparable across gamma.
        meter.add(loss, clean_loss, criterion.last_robust_losses.mean(), logits, lb, y, criterion.last_weights)
    stats = meter.read()
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
    """Train, checkpoint every epoch, evaluate at the end; returns the final metrics (also in final.json)."""
    recipe.validate(cfg)
    run_dir = recipe.run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.trainer.device)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)

    dataset = recipe.train_dataset(cfg)
    info = recipe.data_info(dataset)
    classifier = recipe.build_classifier(cfg.model.name, info, device=device, init=cfg.model.init)
    criterion, autoeps = recipe.build_hooks(cfg, num_examples=len(dataset), device=device)
    optimizer, lr_scheduler = recipe.build_optimization(cfg, classifier)
    regularizer = recipe.build_regularizer(cfg)
    val_loader = recipe.test_loader(cfg, num_examples=cfg.trainer.val_examples)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

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
        metrics_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["epoch"] <= state["epoch"]))
        log.info("resumed from %s at epoch %d", last_path, state["epoch"])
    else:
        if cfg.trainer.resume:
            log.warning("trainer.resume=true but %s does not exist: starting from scratch", last_path)
        elif last_path.exists():
            log.warning("%s holds a previous run: starting from scratch and overwriting it "
                        "(trainer.resume=true continues it instead)", run_dir)
        metrics_path.write_text("")
        for stale in ("best.pt", "final.json"):  # a previous run's results must not pass for this one's
            (run_dir / stale).unlink(missing_ok=True)

    loader_generator = torch.Generator()
    autoeps.set_epoch_length(len(recipe.train_loader(cfg, dataset, loader_generator)))
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch)
    for epoch in range(start_epoch, cfg.trainer.epochs + 1):
        started = time.time()
        # Shuffling order depends only on (seed, epoch), so a resumed run sees the same batches.
        loader_generator.manual_seed(cfg.seed * 100003 + epoch)
        loader = recipe.train_loader(cfg, dataset, loader_generator)
        stats = train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch, cfg.trainer.progress,
                            regularizer=regularizer)
        lr = optimizer.param_groups[0]["lr"]
        lr_scheduler.step()
        val = evaluate_classifier(classifier, val_loader, cfg.schedule.eps_eval, methods=["IBP"], pgd_steps=0,
                                  progress=False)
        record = {"epoch": epoch, **stats, "lr": lr, "val_clean_error": val["clean_error"],
                  "val_verified_error": val["verified_error"], "seconds": round(time.time() - started, 2)}
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
        if is_checkpoint:
            save_run_state(last_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best)
        if is_best and is_checkpoint:
            checkpoint.copy_atomically(last_path, best_path)
        elif is_best:
            save_run_state(best_path, cfg, epoch, classifier, optimizer, lr_scheduler, criterion, autoeps, info, best)
        if cfg.trainer.stop_after_epochs is not None and epoch >= cfg.trainer.stop_after_epochs:
            log.info("stopping after epoch %d as trainer.stop_after_epochs asks; resume with trainer.resume=true",
                     epoch)
            writer.close()
            return {"stopped_at_epoch": epoch}
    writer.close()
    if not best_path.exists() and last_path.exists():
        # eps_train never reached (a short run): the last epoch is the best we have.
        checkpoint.copy_atomically(last_path, best_path)

    log.info("final evaluation at eps %g on the test set", cfg.schedule.eps_eval)
    final = evaluate_classifier(classifier, recipe.test_loader(cfg), cfg.schedule.eps_eval,
                                methods=list(cfg.eval.methods), pgd_steps=cfg.eval.pgd_steps,
                                crown_max_relu_units=cfg.eval.crown_max_relu_units, progress=cfg.trainer.progress)
    final.update(epochs=cfg.trainer.epochs, best_epoch=best["epoch"])
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
