"""The trainer: one step (per-example eps from AutoEpsScheduler -> the method's margins -> eq. 6 margins update the
offsets -> WeightedRobustLoss -> optimizer step) and an epoch of such steps, on objects the builder made (it
reads no config). The epoch reads the device once, at its end (docs/design.md).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ..core.margins import fused_margin
from ..errors import ArgumentError
from ..methods.base import interpolate
from . import distributed


def ramp_progress(eps_base: float, eps_train: float) -> float:
    """How far the eps ramp is, in [0, 1]: what kappa and the methods' coefficients move with."""
    return min(eps_base / eps_train, 1.0) if eps_train > 0 else 1.0


class EpochMeter:
    """Sums kept as tensors on the training device; read (one sync) once per epoch, summed over ranks.

    The clean loss and error are means over the batches that brought clean logits (at kappa 0 the trainer
    measures them on every ``clean_metric_every``-th batch only), the other metrics over every example.
    """

    def __init__(self, device, group=None):
        self.sums = torch.zeros(6, device=device)  # loss, robust loss, verified, weight | clean loss, clean err
        self.count = 0  # examples
        self.clean_count = 0  # examples that brought clean logits
        self.group = group

    def add(self, loss, clean_loss, robust_loss, logits, certified, y, weights, loss_weight=None):
        """``certified``: ``(B,)`` bool, the examples the training bound certifies. ``logits`` and ``clean_loss``
        None: this batch brought no clean logits. ``loss_weight``: what ``loss`` counts for in the epoch's mean;
        the batch size for one process. Under DDP each rank's loss is its scaled share (the ranks' mean is the
        global batch's loss), so it is global batch size / world size there."""
        batch = len(y)
        sums = [loss.detach() * (batch if loss_weight is None else loss_weight), robust_loss.detach() * batch,
                certified.sum(), weights.sum()]
        if logits is not None:
            sums += [clean_loss.detach() * batch, (logits.detach().argmax(1) != y).sum()]
            self.clean_count += batch
        self.sums[:len(sums)] += torch.stack(sums).to(self.sums.dtype)
        self.count += batch

    def read(self) -> dict:
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count, self.clean_count])])
        totals = distributed.all_reduce_sum(totals, self.group)
        loss, robust, verified, weight = (totals[:4] / totals[6].clamp(min=1)).tolist()
        clean, clean_err = (totals[4:6] / totals[7].clamp(min=1)).tolist()
        return dict(loss=loss, clean_loss=clean, robust_loss=robust, clean_error=clean_err,
                    verified_error=1 - verified, mean_weight=weight)


class Trainer:
    """Certified training with the two hooks, one step at a time.

    Args:
        classifier: the :class:`~lirpa_reweight.core.bounds.BoundedClassifier` being trained.
        method: a training method (:mod:`lirpa_reweight.methods`): margins for a batch at per-example radii.
        criterion: the :class:`~lirpa_reweight.core.reweight.WeightedRobustLoss`.
        autoeps: the :class:`~lirpa_reweight.core.autoeps.AutoEpsScheduler` around auto_LiRPA's eps scheduler.
        optimizer: any torch optimizer over the classifier's parameters.
        eps_train: the radius the ramp ends at (progress = eps_base / eps_train).
        kappa: (start, end) of the clean-loss weight, moved with the ramp as in CROWN-IBP training.
        regularizer: Shi et al.'s warm-up terms added to the loss (None: none).
        grad_clip: max gradient norm before each step (None: no clipping).
        monitor: a :class:`~lirpa_reweight.training.divergence.DivergenceMonitor` fed every step's loss.
        process_group: the ranks' group under data parallelism (None for one process).
        clean_metric_every: at kappa 0 the clean logits feed only the clean loss and error of the epoch's
            metrics: they are computed (without autograd) on every this-many-th batch of an epoch and skipped on
            the others where the graph allows (``BoundedClassifier.certify``'s ``clean``); 1: every batch.
    """

    def __init__(self, classifier, method, criterion, autoeps, optimizer, *, eps_train: float,
                 kappa: Sequence[float] = (1.0, 0.5), regularizer=None, grad_clip: Optional[float] = None,
                 monitor=None, process_group=None, clean_metric_every: int = 1):
        self.classifier, self.method, self.criterion, self.autoeps = classifier, method, criterion, autoeps
        self.optimizer, self.eps_train, self.kappa = optimizer, eps_train, tuple(kappa)
        self.regularizer, self.grad_clip, self.monitor, self.group = regularizer, grad_clip, monitor, process_group
        if isinstance(clean_metric_every, bool) or not isinstance(clean_metric_every, int) or clean_metric_every < 1:
            raise ArgumentError("clean_metric_every", clean_metric_every, "an integer >= 1")
        self.clean_metric_every = clean_metric_every

    def step(self, x, y, index, meter: EpochMeter, batch_slice=None, measure_clean: bool = True) -> float:
        """One optimizer step on a batch; its sums go to ``meter`` (no host sync). Returns the ramp's progress.

        ``measure_clean``: whether the meter gets this batch's clean loss and error when the loss needs no clean
        logits (kappa 0)."""
        classifier, autoeps = self.classifier, self.autoeps
        # index stays where the loader made it (CPU): AutoEpsScheduler checks it there without a GPU sync.
        x, y = x.to(classifier.device, non_blocking=True), y.to(classifier.device, non_blocking=True)
        autoeps.step_batch()
        eps_base = autoeps.get_eps()
        progress = ramp_progress(eps_base, self.eps_train)
        kappa = interpolate(*self.kappa, progress)
        eps = autoeps.eps(index)
        # The method's margins go to both hooks unchanged (see lirpa_reweight/methods/). At kappa 0 the clean
        # logits feed only the meter, so their pass may skip autograd or not run (core/clean_pass.py).
        clean = "grad" if kappa > 0 else "no_grad" if measure_clean else "none"
        logits, lb, robust_losses = self.method(classifier, x, y, eps, progress, batch_slice, clean=clean)
        if lb is None:  # loss fusion: per-example robust CE bounds and their margin (core/margins.fused_margin)
            weighted = self.criterion.compute_from_losses(robust_losses, fused_margin(robust_losses.detach()),
                                                          logits, y, kappa=kappa)
            certified, graph = weighted.margins > 0, classifier.fused
        else:
            weighted = self.criterion.compute(lb, logits, y, kappa=kappa, robust_losses=robust_losses)
            certified, graph = (lb.detach() > 0).all(1), classifier.bounded
        loss = weighted.loss
        if self.regularizer is not None:  # Shi et al.'s warm-up terms, from the bounds the method just computed
            loss = loss + self.regularizer(graph, eps_base, autoeps.get_max_eps())
        if self.monitor is not None:
            self.monitor.observe(loss)  # device-side; read at the epoch's end
        autoeps.update(index, weighted.margins)  # eq. 6 margins at each example's own eps
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(classifier.parameters(), self.group)
        if self.grad_clip is not None:  # after averaging: every rank clips the same gradient alike
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            clean_loss = None if logits is None else torch.nn.functional.cross_entropy(logits, y)
        # Under DDP each rank's loss is its share of the global batch's (see EpochMeter.add).
        loss_weight = None if self.group is None else weighted.examples / distributed.world_size(self.group)
        # The unweighted robust CE is logged: it stays comparable across gamma.
        meter.add(loss, clean_loss, weighted.robust_losses.mean(), logits, certified, y, weighted.weights,
                  loss_weight=loss_weight)
        return progress

    def train_epoch(self, loader, epoch: int, progress_bar: bool = False) -> dict:
        """One epoch over ``loader`` (batches of ``(x, y, index)``); returns the epoch's training metrics."""
        self.classifier.train()
        self.autoeps.train()
        self.autoeps.step_epoch()
        meter = EpochMeter(self.classifier.device, self.group)
        progress = 0.0
        for batch_number, (x, y, index) in enumerate(tqdm(loader, desc=f"epoch {epoch}", disable=not progress_bar,
                                                          leave=False)):
            # Under DDP the loader's GlobalBatchSampler knows where this rank's rows sit in the global batch.
            batch_slice = loader.batch_sampler.slice_of(batch_number) if self.group is not None else None
            progress = self.step(x, y, index, meter, batch_slice, batch_number % self.clean_metric_every == 0)
        stats = meter.read()
        # The deferred input checks of the step (no host sync there), read at the epoch's logging point.
        for hook in (self.classifier, self.criterion, self.autoeps):
            hook.check(f"epoch {epoch}")
        stats.update(eps_base=self.autoeps.get_eps(), kappa=interpolate(*self.kappa, progress),
                     **{f"autoeps_{k}": v for k, v in self.autoeps.stats().items()})
        stats.update(self.method.coefficients(progress))  # e.g. CROWN-IBP's beta, SABR's lambda, CC-/MTL-IBP's alpha
        return stats
