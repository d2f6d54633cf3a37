"""The training loop's epoch: per-example eps -> method's bounds -> weighted loss -> hooks' updates -> step.

One step (see DESIGN.md): per-example eps from AutoEpsScheduler -> margin lower bounds from the training
method -> eq. 6 margins update the offsets -> WeightedRobustLoss -> optimizer step. Also the schedules that move
with the eps ramp (kappa, CROWN-IBP's beta) and the epoch's meter, which reads the device once per epoch.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import distributed, recipe


def ramp_progress(cfg: DictConfig, eps_base: float) -> float:
    """How far the eps ramp is, in [0, 1]: what kappa, beta and the methods' coefficients move with."""
    eps_train = cfg.schedule.eps_train
    return min(eps_base / eps_train, 1.0) if eps_train > 0 else 1.0


def schedule_factors(cfg: DictConfig, eps_base: float) -> tuple[float, float]:
    """kappa (clean-loss weight) and CROWN-IBP beta, moved linearly with the eps ramp, as in CROWN-IBP training."""
    progress = ramp_progress(cfg, eps_base)
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


def train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, epoch, progress=True, monitor=None,
                group=None, regularizer=None) -> dict:
    """One epoch; ``group`` is the ranks' process group under DDP (None for one process); ``regularizer`` adds
    Shi et al.'s warm-up terms to the loss (None: none)."""
    classifier.train()
    autoeps.train()
    autoeps.step_epoch()
    meter = EpochMeter(classifier.device, group)
    loss_weight = None
    method = cfg.bound.method
    train_method = recipe.build_method(cfg)
    for batch_number, (x, y, index) in enumerate(tqdm(loader, desc=f"epoch {epoch}", disable=not progress,
                                                      leave=False)):
        # index stays where the loader made it (CPU): AutoEpsScheduler checks it there without a GPU sync.
        x, y = x.to(classifier.device, non_blocking=True), y.to(classifier.device, non_blocking=True)
        autoeps.step_batch()
        eps_base = autoeps.get_eps()
        kappa, beta = schedule_factors(cfg, eps_base)
        eps = autoeps.eps(index)
        # The method's margins go to both hooks unchanged (see lirpa_reweight/methods/).
        ramp = ramp_progress(cfg, eps_base)
        # Under DDP the loader's GlobalBatchSampler knows where this rank's rows sit in the global batch.
        batch_slice = loader.batch_sampler.slice_of(batch_number) if group is not None else None
        logits, lb, robust_losses = train_method(classifier, x, y, eps, ramp, batch_slice)
        loss = criterion(lb, logits, y, kappa=kappa, robust_losses=robust_losses)
        if regularizer is not None:  # Shi et al.'s warm-up terms, from the bounds the method just computed
            loss = loss + regularizer(classifier.bounded, eps_base, autoeps.get_max_eps())
        if monitor is not None:
            monitor.observe(loss)  # device-side; read at the epoch's end
        autoeps.update(index, criterion.last_margins)  # eq. 6 margins at each example's own eps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(classifier.parameters(), group)
        if cfg.trainer.grad_clip is not None:  # after averaging: every rank clips the same gradient alike
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), cfg.trainer.grad_clip)
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
    stats.update(train_method.coefficients(ramp))  # e.g. SABR's lambda, CC-/MTL-IBP's alpha
    return stats
