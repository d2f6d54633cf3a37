#!/usr/bin/env python
"""What one certified-training step costs: plain vs IBP / CROWN-IBP, with and without the hooks,
through BoundedClassifier and as a bare auto_LiRPA loop.

    python benchmarks/benchmark_step.py [--recipe mnist|cifar|both] [--batch-size N] [--repeats R]
        [--warmup W] [--device cpu|cuda] [--threads T] [--model NAME] [--input-size S] [--markdown]
        [--json PATH]
    python benchmarks/benchmark_step.py --epoch [--epoch-examples N] [--epoch-rounds R] [--batch-size N]
        [--device cpu|cuda] [--input-size S] [--json PATH]

``--epoch`` times whole epochs instead of steps: one clean epoch and one IBP epoch of cnn_7layer (Shi et al.
2021's CIFAR model, their batch 128, eps 8/255) over CIFAR-shaped synthetic data held on the device (no
DataLoader, no augmentation: compute alone), to set the IBP/clean epoch ratio beside Shi et al.'s 1.8x.

Every variant trains the same model (one set of weights, one Adam optimizer, shared by all variants) on
the same fixed random batch (pixels uniform in [0, 1], labels uniform, fixed seed), one full step each
time: forward, bounds, loss, backward, optimizer step. Variants run round-robin, the starting variant
rotating every round, so that drift (other processes, CPU clocks) hits all of them alike; the first
``--warmup`` rounds are not recorded.

Variants:
  plain                     cross-entropy of the clean logits (the model called directly);
  IBP / CROWN-IBP           ``BoundedClassifier.certify`` at a fixed eps, loss
                            ``kappa * CE(clean) + (1 - kappa) * mean robust CE`` (kappa 0.5; CROWN-IBP
                            mixes its bounds with IBP's by beta 0.5);
  ... + hooks               the same with both tactics on: ``AutoEpsScheduler.eps/update`` around an
                            auto_LiRPA ``FixedScheduler`` and ``WeightedRobustLoss(gamma=5, alpha=0.1)``;
  IBP + warm-up regularisers  the IBP step plus Shi et al.'s (2021) warm-up terms (``WarmupRegularizer``,
                            tol 0.5, lambda 0.5) read from the intermediate bounds, mid-ramp (eps = eps_max / 2);
  IBP + hooks, kappa 0      a purely robust loss: the clean logits feed only the logged clean error, so the step
                            skips their pass (``certify(..., clean="none")``, as the trainer does on all but every
                            ``trainer.clean_metric_every``-th batch at kappa 0; same bounds and gradients,
                            tests/unit/test_clean_pass.py); ``, clean pass recorded``: the same step with the clean
                            pass run and recorded by autograd, as every step did before;
  CROWN-IBP fused (+ hooks)  the CROWN-IBP step through auto_LiRPA's loss fusion (``certify_fused``: the
                            CrossEntropyWrapper graph, upper bounds of the CE mixed by beta 0.5), loss
                            ``kappa * CE(clean) + (1 - kappa) * mean u_i``; with the hooks, both read the fused
                            margin ``2 exp(-u_i) - 1`` (``WeightedRobustLoss.compute_from_losses``);
  ... bare auto_LiRPA       the same step written as auto_LiRPA's examples/vision/simple_training.py
                            writes it: BoundedModule on the model, normalisation outside, C matrix,
                            ``compute_bounds(IBP=True, method=None)`` (+ the backward call for CROWN-IBP).

Peak memory is the memory one step needs on top of what is already resident (weights, gradients,
optimizer state), measured on one extra step per variant after the timing:
  cuda: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` at the step's start;
  cpu:  the peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident size at
        the step's start, with glibc told to hand blocks of 64 KiB or more back to the OS when freed, so
        that the resident size follows the live tensors. Linux/glibc only; elsewhere it reads "n/a".
  Each variant is probed twice and the lesser value kept (the first call also pays one-time allocations).
        Because that malloc setting slows allocation, all timing runs before any memory probe.
"""
from __future__ import annotations

import os
import argparse
import ctypes
import ctypes.util
import gc
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import CrossEntropyLoss

import lirpa_reweight  # noqa: F401  (patches auto_LiRPA for torch 2.x; must come before auto_LiRPA)
from lirpa_reweight import AutoEpsScheduler, BoundedClassifier, WeightedRobustLoss
from lirpa_reweight.data.datasets import DATASETS
from hostsync import count_host_syncs, in_auto_lirpa, optimizer_step_counters
from lirpa_reweight.models import build_model
from lirpa_reweight.fast.regularizers import WarmupRegularizer
from lirpa_reweight.core.margins import fused_margin, robust_cross_entropy

from auto_LiRPA import BoundedModule, BoundedTensor  # noqa: E402
from auto_LiRPA.eps_scheduler import FixedScheduler  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402

KAPPA = 0.5  # clean-loss weight at the end of the recipes' kappa ramp
BETA = 0.5  # CROWN-IBP / IBP bound mixing, mid-ramp
GAMMA, ALPHA = 5.0, 0.1  # the paper's re-weighting (Table 2)
TRAIN_SET_SIZES = {"mnist": 60000, "cifar10": 50000}  # AutoEpsScheduler keeps one offset per example

# Which packaged recipe each --recipe name stands for, and the overrides that switch its hooks on
# (mnist_quick trains with them off; their "on" values are what the hooks variants need).
RECIPE_PRESETS = {"mnist": ("mnist_quick", ["reweight=on", "autoeps=on"]), "cifar": ("cifar_ibp", [])}
# The CIFAR recipe's batch (1024) and model (DM-large) are far too big for a CPU step; 32 is a batch
# a CPU finishes in seconds. On CUDA, 256 is the paper's memory-bound CROWN-IBP batch (cifar_crownibp).
DEFAULT_BATCH = {("mnist", "cpu"): None, ("mnist", "cuda"): None, ("cifar", "cpu"): 32, ("cifar", "cuda"): 256}

VARIANTS = ("plain", "IBP bare auto_LiRPA", "IBP", "IBP + hooks", "IBP + warm-up regularisers",
            "IBP + hooks, kappa 0, clean pass recorded", "IBP + hooks, kappa 0",
            "CROWN-IBP bare auto_LiRPA", "CROWN-IBP", "CROWN-IBP + hooks", "CROWN-IBP fused",
            "CROWN-IBP fused + hooks")


@dataclass
class Recipe:
    """What the benchmark takes from one packaged recipe."""

    key: str
    experiment: str
    model: str
    dataset: str
    batch_size: int
    eps: float
    maxoff: float


def load_recipe(key: str) -> Recipe:
    """Model, data set, batch, eps_train and maxoff of the recipe behind ``--recipe key``, from conf/."""
    from hydra import compose, initialize_config_module

    experiment, overrides = RECIPE_PRESETS[key]
    with initialize_config_module(config_module="lirpa_reweight.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}", *overrides])
    return Recipe(key=key, experiment=experiment, model=str(cfg.model.name), dataset=str(cfg.data.name),
                  batch_size=int(cfg.trainer.batch_size), eps=float(cfg.schedule.eps_train),
                  maxoff=float(cfg.autoeps.maxoff))


# ----------------------------------------------------------------------------- the steps


@dataclass
class Setup:
    """One recipe's model, batch and the eight step functions, ready to run."""

    recipe: Recipe
    in_shape: tuple
    batch_size: int
    device: torch.device
    steps: dict = field(default_factory=dict)  # variant name -> zero-argument step function
    optimizer: Optional[torch.optim.Optimizer] = None  # its step counters are host tensors by design


def build_setup(recipe: Recipe, batch_size: int, device: torch.device, seed: int,
                in_size: Optional[int] = None) -> Setup:
    info = DATASETS[recipe.dataset]
    in_shape = tuple(info.in_shape) if in_size is None else (info.in_shape[0], in_size, in_size)
    num_classes = info.num_classes
    torch.manual_seed(seed)
    model = build_model(recipe.model, in_shape, num_classes).to(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size,) + in_shape, generator=generator).to(device)
    y = torch.randint(num_classes, (batch_size,), generator=generator).to(device)
    index = torch.arange(batch_size)  # on the CPU, where a DataLoader yields it
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)

    # Ours and the bare loop wrap the same model: a BoundedModule holds the model's own Parameters,
    # so one optimizer over model.parameters() trains all variants.
    # Checks deferred as the trainer defers them, so that the step makes no host synchronisation.
    # loss_fusion adds the CrossEntropyWrapper graph beside the plain one (the same Parameters); certify is unchanged.
    classifier = BoundedClassifier(model, torch.rand((2,) + in_shape), device=device, mean=info.mean, std=info.std,
                                   sync_checks=False, loss_fusion=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX tracer warns about every data-dependent branch
        bare = BoundedModule(model, torch.randn((2,) + in_shape, device=device), device=device)
    shared = {id(p) for p in model.parameters()}
    if not all(id(p) in shared for p in bare.parameters()):
        raise RuntimeError("the bare BoundedModule does not share the model's parameters; the comparison would "
                           "train two different models")
    model.train(), classifier.train(), bare.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = WeightedRobustLoss(gamma=GAMMA, alpha=ALPHA, sync_checks=False)
    autoeps = AutoEpsScheduler(FixedScheduler(recipe.eps), TRAIN_SET_SIZES[recipe.dataset], recipe.maxoff,
                               device=device, sync_checks=False)
    autoeps.train()

    def finish(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def plain():
        logits = model((x - mean) / std)
        finish(F.cross_entropy(logits, y))

    def ours(method):
        beta = BETA if method == "CROWN-IBP" else None

        def step():
            logits, lb = classifier.certify(x, y, recipe.eps, method, beta)
            finish(KAPPA * F.cross_entropy(logits, y) + (1 - KAPPA) * robust_cross_entropy(lb).mean())
        return step

    def ours_with_hooks(method, kappa=KAPPA, clean="grad"):
        beta = BETA if method == "CROWN-IBP" else None

        def step():
            eps = autoeps.eps(index)
            logits, lb = classifier.certify(x, y, eps, method, beta, clean=clean)
            weighted = criterion.compute(lb, logits, y, kappa=kappa)
            autoeps.update(index, weighted.margins)
            finish(weighted.loss)
        return step

    def bare_auto_lirpa(method):
        # As auto_LiRPA's examples/vision/simple_training.py writes one step (its loader normalises;
        # here that normalisation is part of the step, as it is in ours).
        eye = torch.eye(num_classes, device=device)
        data_max, data_min = (1.0 - mean) / std, (0.0 - mean) / std

        def step():
            data = (x - mean) / std
            c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
            keep = ~(y.unsqueeze(1) == torch.arange(num_classes, device=device).unsqueeze(0))
            c = c[keep].view(data.size(0), num_classes - 1, num_classes)
            data_ub = torch.min(data + recipe.eps / std, data_max)
            data_lb = torch.max(data - recipe.eps / std, data_min)
            ptb = PerturbationLpNorm(norm=float("inf"), eps=recipe.eps, x_L=data_lb, x_U=data_ub)
            output = bare(BoundedTensor(data, ptb))
            regular_ce = CrossEntropyLoss()(output, y)
            if method == "IBP":
                lb, _ = bare.compute_bounds(IBP=True, C=c, method=None)
            else:
                ilb, _ = bare.compute_bounds(IBP=True, C=c, method=None)
                clb, _ = bare.compute_bounds(IBP=False, C=c, method="backward", bound_upper=False)
                lb = clb * BETA + ilb * (1 - BETA)
            lb_padded = torch.cat((torch.zeros(size=(lb.size(0), 1), dtype=lb.dtype, device=lb.device), lb), dim=1)
            fake_labels = torch.zeros(size=(lb.size(0),), dtype=torch.int64, device=lb.device)
            robust_ce = CrossEntropyLoss()(-lb_padded, fake_labels)
            finish(KAPPA * regular_ce + (1 - KAPPA) * robust_ce)
        return step

    def fused(with_hooks):
        def step():
            eps = autoeps.eps(index) if with_hooks else recipe.eps
            logits, u = classifier.certify_fused(x, y, eps, "CROWN-IBP", BETA)
            if with_hooks:
                weighted = criterion.compute_from_losses(u, fused_margin(u.detach()), logits, y, kappa=KAPPA)
                autoeps.update(index, weighted.margins)
                loss = weighted.loss
            else:
                loss = KAPPA * F.cross_entropy(logits, y) + (1 - KAPPA) * u.mean()
            finish(loss)
        return step

    regularizer = WarmupRegularizer(tol=0.5, lam=0.5)

    def ours_with_regularizer():
        # Mid-ramp (weight lambda/2): the terms are computed; outside the ramp they cost nothing.
        logits, lb = classifier.certify(x, y, recipe.eps, "IBP")
        loss = KAPPA * F.cross_entropy(logits, y) + (1 - KAPPA) * robust_cross_entropy(lb).mean()
        finish(loss + regularizer(classifier, recipe.eps, 2 * recipe.eps))

    steps = {"plain": plain}
    for method in ("IBP", "CROWN-IBP"):
        steps[f"{method} bare auto_LiRPA"] = bare_auto_lirpa(method)
        steps[method] = ours(method)
        steps[f"{method} + hooks"] = ours_with_hooks(method)
        if method == "IBP":
            steps["IBP + warm-up regularisers"] = ours_with_regularizer
            # kappa 0: the clean logits feed only the logged clean error; the trainer skips their pass on most batches
            steps["IBP + hooks, kappa 0, clean pass recorded"] = ours_with_hooks(method, 0.0, clean="grad")
            steps["IBP + hooks, kappa 0"] = ours_with_hooks(method, 0.0, clean="none")
    steps["CROWN-IBP fused"], steps["CROWN-IBP fused + hooks"] = fused(False), fused(True)
    assert tuple(steps) == VARIANTS
    return Setup(recipe, in_shape, batch_size, device, steps, optimizer)


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(setup: Setup, repeats: int, warmup: int) -> dict:
    """Seconds per step of every variant, ``repeats`` values each, round ``r`` starting at variant ``r mod n``.

    Each timed step follows an untimed step of the same variant: the variants share one model but not their
    bounded modules, and the first step after switching modules pays for re-allocating its buffers (measured:
    up to +40% on the variant that always came second), which no training loop pays.
    """
    names = list(setup.steps)
    times = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            setup.steps[name]()
            _sync(setup.device)
            started = time.perf_counter()
            setup.steps[name]()
            _sync(setup.device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


class CpuStepMemory:
    """Peak resident memory a step adds, on Linux with glibc (see the module docstring)."""

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

    def __init__(self):
        self.libc = None
        path = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(path)
            Path("/proc/self/clear_refs").write_text("5")
            self._status("VmHWM")
            libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError, TypeError, KeyError):
            return
        # Freed blocks >= 64 KiB go back to the OS at once, so resident size tracks live tensors.
        libc.mallopt(self.M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(self.M_TRIM_THRESHOLD, 128 * 1024)
        self.libc = libc

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
        raise KeyError(key)

    def __call__(self, step: Callable[[], None]) -> Optional[int]:
        if self.libc is None:
            return None
        gc.collect()
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = self._status("VmRSS")
        step()
        return max(self._status("VmHWM") - before, 0)


def cuda_step_memory(device: torch.device) -> Callable[[Callable[[], None]], int]:
    def measure(step):
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return measure


MEMORY_MEANING = {
    "cpu": "peak resident memory one step adds on top of weights and optimizer state (VmHWM - VmRSS at the "
           "step's start, glibc returning freed blocks >= 64 KiB to the OS)",
    "cuda": "torch.cuda.max_memory_allocated() during one step minus memory_allocated() at its start",
}


# ----------------------------------------------------------------------------- reporting


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(median), float(q3)


def paired_overhead(times: dict, slow: str, fast: str) -> tuple[float, float, float]:
    """Median and quartiles, in %, of the per-round ratio ``slow / fast - 1`` (rounds pair the two steps)."""
    ratios = [100.0 * (a / b - 1.0) for a, b in zip(times[slow], times[fast])]
    q1, median, q3 = quartiles(ratios)
    return median, q1, q3


def host_syncs(setup: Setup) -> dict:
    """Calls per step that make the host wait for the device (item, bool, tolist, nonzero, cuda.synchronize),
    counted on one step of each variant after the timing (see benchmarks/hostsync.py)."""
    counts = {}
    for name, step in setup.steps.items():
        with count_host_syncs(optimizer_step_counters(setup.optimizer)) as counter:
            step()
        # Upstream auto_LiRPA 0.7 checks every node's IBP bounds for NaN itself (a sync per node): counted apart.
        inside = sum(n for (_, site), n in counter.counts.items() if in_auto_lirpa(site))
        counts[name] = (counter.total - inside, inside)
    return counts


def summarize(setup: Setup, times: dict, memory: dict, syncs: Optional[dict] = None) -> dict:
    rows = []
    plain_median = quartiles(times["plain"])[1]
    for name in VARIANTS:
        q1, median, q3 = quartiles(times[name])
        rows.append(dict(variant=name, median_ms=1e3 * median, iqr_ms=1e3 * (q3 - q1),
                         ratio_to_plain=median / plain_median, peak_step_memory_bytes=memory.get(name),
                         host_syncs=(syncs or {}).get(name, (None, None))[0],
                         auto_lirpa_host_syncs=(syncs or {}).get(name, (None, None))[1]))
    overheads = {}
    for method in ("IBP", "CROWN-IBP"):
        overheads[f"hooks {method}"] = paired_overhead(times, f"{method} + hooks", method)
        overheads[f"wrapper {method}"] = paired_overhead(times, method, f"{method} bare auto_LiRPA")
    overheads["warm-up regularisers IBP"] = paired_overhead(times, "IBP + warm-up regularisers", "IBP")
    overheads["clean pass skipped"] = paired_overhead(times, "IBP + hooks, kappa 0",
                                                      "IBP + hooks, kappa 0, clean pass recorded")
    overheads["kappa 0 vs bare auto_LiRPA"] = paired_overhead(times, "IBP + hooks, kappa 0", "IBP bare auto_LiRPA")
    overheads["hooks CROWN-IBP fused"] = paired_overhead(times, "CROWN-IBP fused + hooks", "CROWN-IBP fused")
    overheads["fusion CROWN-IBP"] = paired_overhead(times, "CROWN-IBP fused", "CROWN-IBP")
    recipe = setup.recipe
    return dict(recipe=recipe.key, experiment=recipe.experiment, model=recipe.model, dataset=recipe.dataset,
                in_shape=list(setup.in_shape), batch_size=setup.batch_size, eps=recipe.eps, maxoff=recipe.maxoff,
                device=str(setup.device), threads=torch.get_num_threads(), torch=torch.__version__,
                repeats=len(times["plain"]), rows=rows,
                overheads_percent={k: dict(median=m, q1=a, q3=b) for k, (m, a, b) in overheads.items()},
                memory_meaning=MEMORY_MEANING[setup.device.type])


def _least(values) -> Optional[int]:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def _mib(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _syncs(row: dict) -> str:
    if row.get("host_syncs") is None:
        return "n/a"
    inside = row.get("auto_lirpa_host_syncs") or 0
    return str(row["host_syncs"]) + (f" (+{inside} in auto_LiRPA)" if inside else "")


def format_result(result: dict, markdown: bool) -> str:
    shape = "x".join(str(s) for s in result["in_shape"])
    lines = [f"{result['experiment']} recipe: {result['model']} on {result['dataset']} {shape}, batch "
             f"{result['batch_size']}, eps {result['eps']:.4g}, maxoff {result['maxoff']:g}, device "
             f"{result['device']} ({result['threads']} threads), torch {result['torch']}; median of "
             f"{result['repeats']} interleaved steps after warm-up", ""]
    header = ("variant", "median ms", "IQR ms", "x plain", "peak step memory", "host syncs")
    cells = [(r["variant"], f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}", f"{r['ratio_to_plain']:.2f}",
              _mib(r["peak_step_memory_bytes"]), _syncs(r))
             for r in result["rows"]]
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
    else:
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  for row in cells]
    over = result["overheads_percent"]

    def pct(key):
        o = over[key]
        return f"{o['median']:+.1f}% (IQR {o['q1']:+.1f}% .. {o['q3']:+.1f}%)"

    ratio = {r["variant"]: r["ratio_to_plain"] for r in result["rows"]}
    lines += ["",
              f"hooks overhead (ours + hooks vs ours, per-round paired): IBP {pct('hooks IBP')}, "
              f"CROWN-IBP {pct('hooks CROWN-IBP')}",
              f"warm-up regularisers overhead (IBP + regularisers vs IBP, per-round paired, during the ramp only): "
              f"{pct('warm-up regularisers IBP')}",
              f"wrapper overhead (BoundedClassifier vs bare auto_LiRPA, per-round paired): IBP {pct('wrapper IBP')}, "
              f"CROWN-IBP {pct('wrapper CROWN-IBP')}",
              f"IBP step / plain step: {ratio['IBP']:.2f}x (floor about 3: clean, centre and radius passes); "
              f"CROWN-IBP step / plain step: {ratio['CROWN-IBP']:.2f}x",
              f"kappa 0 (the clean logits feed only the logged clean error): IBP + hooks / plain step "
              f"{ratio['IBP + hooks, kappa 0']:.2f}x; its clean pass skipped vs recorded, per-round paired: "
              f"{pct('clean pass skipped')}; vs bare auto_LiRPA's IBP step: {pct('kappa 0 vs bare auto_LiRPA')}",
              f"loss fusion (CROWN-IBP fused vs CROWN-IBP, per-round paired): {pct('fusion CROWN-IBP')}; hooks on the "
              f"fused step: {pct('hooks CROWN-IBP fused')}; fused CROWN-IBP step / IBP step: "
              f"{ratio['CROWN-IBP fused'] / ratio['IBP']:.2f}x (+ hooks / IBP + hooks: "
              f"{ratio['CROWN-IBP fused + hooks'] / ratio['IBP + hooks']:.2f}x)",
              f"peak step memory: {result['memory_meaning']}",
              "host syncs: calls per step that make the host wait for the device (item, bool, tolist, nonzero, "
              "cuda.synchronize; optimizer step counters and CPU index checks excluded); 0 means the step never waits"]
    if markdown:
        lines = [line if not line or line.startswith("|") else line + "  " for line in lines]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one epoch: IBP vs clean

EPOCH_MODEL, EPOCH_BATCH, EPOCH_EPS = "cnn_7layer", 128, 8 / 255  # Shi et al. 2021's CIFAR-10 model, batch, eps
EPOCH_REFERENCE_RATIO = 1.8  # the IBP / clean epoch ratio issue #23 quotes from Shi et al. 2021
DEFAULT_EPOCH_EXAMPLES = {"cpu": 512, "cuda": 50000}  # CIFAR-10's train set on CUDA; a quick look on a CPU


def compare_epochs(device: torch.device, examples: int, batch_size: int, rounds: int, seed: int,
                   in_size: Optional[int] = None) -> dict:
    """Seconds of a clean and of an IBP epoch (``examples // batch_size`` full batches, shuffled each epoch).

    The clean step is cross-entropy of the logits, the IBP step ``kappa * CE(clean) + (1 - kappa) * robust CE``
    through ``BoundedClassifier.certify`` at eps 8/255 (the step benchmark's "IBP" variant); both train the same
    model with one Adam. A few batches of each run first unrecorded; then ``rounds`` rounds of one epoch each,
    the order alternating, and the medians are reported with the per-round paired ratio.
    """
    info = DATASETS["cifar10"]
    in_shape = tuple(info.in_shape) if in_size is None else (info.in_shape[0], in_size, in_size)
    torch.manual_seed(seed)
    model = build_model(EPOCH_MODEL, in_shape, info.num_classes).to(device)
    generator = torch.Generator().manual_seed(seed)
    data = torch.rand((examples,) + in_shape, generator=generator).to(device)
    labels = torch.randint(info.num_classes, (examples,), generator=generator).to(device)
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    classifier = BoundedClassifier(model, torch.rand((2,) + in_shape), device=device, mean=info.mean, std=info.std,
                                   sync_checks=False)
    model.train(), classifier.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = examples // batch_size  # full batches only: train-mode BatchNorm refuses a batch of one
    if batches < 1:
        raise ValueError(f"--epoch-examples {examples} is less than one batch of {batch_size}")

    def clean(x, y):
        return F.cross_entropy(model((x - mean) / std), y)

    def ibp(x, y):
        logits, lb = classifier.certify(x, y, EPOCH_EPS, "IBP")
        return KAPPA * F.cross_entropy(logits, y) + (1 - KAPPA) * robust_cross_entropy(lb).mean()

    def epoch(loss_of, limit: Optional[int] = None) -> float:
        order = torch.randperm(examples, device=device)
        _sync(device)
        started = time.perf_counter()
        for b in range(batches if limit is None else min(limit, batches)):
            index = order[b * batch_size:(b + 1) * batch_size]
            loss = loss_of(data[index], labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - started

    epoch(clean, 3), epoch(ibp, 3)  # warm-up: allocations, cuDNN's algorithm search
    seconds = {"clean": [], "IBP": []}
    for round_ in range(rounds):
        for name in (("clean", "IBP") if round_ % 2 == 0 else ("IBP", "clean")):
            seconds[name].append(epoch(clean if name == "clean" else ibp))
    clean_s, ibp_s = (float(np.median(seconds[k])) for k in ("clean", "IBP"))
    paired = [i / c for i, c in zip(seconds["IBP"], seconds["clean"])]
    return dict(measurement="epoch", model=EPOCH_MODEL, dataset="cifar10 (synthetic, on the device)",
                in_shape=list(in_shape), examples=examples, batch_size=batch_size, batches=batches, eps=EPOCH_EPS,
                device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, rounds=rounds,
                clean_epoch_s=clean_s, ibp_epoch_s=ibp_s, clean_epoch_all_s=seconds["clean"],
                ibp_epoch_all_s=seconds["IBP"], ibp_over_clean=ibp_s / clean_s,
                ibp_over_clean_paired_median=float(np.median(paired)), reference_ratio=EPOCH_REFERENCE_RATIO)


def format_epochs(result: dict) -> str:
    shape = "x".join(str(s) for s in result["in_shape"])
    return (f"epoch: {result['model']} on {result['dataset']} {shape}, {result['batches']} batches of "
            f"{result['batch_size']}, eps {result['eps']:.4g}, device {result['device']} ({result['threads']} threads), "
            f"torch {result['torch']}; median of {result['rounds']} epochs each\n"
            f"clean epoch {result['clean_epoch_s']:.3f} s, IBP epoch {result['ibp_epoch_s']:.3f} s: IBP / clean "
            f"{result['ibp_over_clean']:.2f}x (per-round paired {result['ibp_over_clean_paired_median']:.2f}x; "
            f"Shi et al. 2021: {result['reference_ratio']:.1f}x)")


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("mnist", "cifar", "both"), default="both",
                        help="mnist: the mnist_quick recipe's model; cifar: the cifar_ibp recipe's (default: both)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the MNIST recipe's 100; CIFAR 32 on CPU, 256 on CUDA")
    parser.add_argument("--repeats", type=int, default=20, help="recorded rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="unrecorded rounds first (default 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--model", default=None, help="a model of lirpa_reweight.models instead of the recipe's")
    parser.add_argument("--input-size", type=int, default=None,
                        help="square input side instead of the data set's (for quick checks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--epoch", action="store_true",
                        help="time a clean and an IBP epoch of cnn_7layer instead of the step variants")
    parser.add_argument("--epoch-examples", type=int, default=None,
                        help="examples per --epoch epoch (default: 50000 on CUDA, 512 on CPU)")
    parser.add_argument("--epoch-rounds", type=int, default=3, help="epochs of each kind for --epoch (default 3)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "threads", "input_size", "epoch_examples", "epoch_rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.epoch:
        result = compare_epochs(device, args.epoch_examples or DEFAULT_EPOCH_EXAMPLES[device.type],
                                args.batch_size or EPOCH_BATCH, args.epoch_rounds, args.seed, args.input_size)
        print(format_epochs(result), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps([result], indent=2))
        return [result]
    keys = ("mnist", "cifar") if args.recipe == "both" else (args.recipe,)
    setups = []
    for key in keys:
        recipe = load_recipe(key)
        if args.model is not None:
            recipe.model = args.model
        batch = args.batch_size or DEFAULT_BATCH[(key, device.type)] or recipe.batch_size
        setups.append(build_setup(recipe, batch, device, args.seed, args.input_size))

    # All timing first: the CPU memory probe changes malloc's behaviour for the rest of the process.
    all_times = [time_round_robin(setup, args.repeats, args.warmup) for setup in setups]
    measure = None
    if not args.no_memory:
        measure = cuda_step_memory(device) if device.type == "cuda" else CpuStepMemory()
    results = []
    for setup, times in zip(setups, all_times):
        memory = {}
        if measure is not None:
            # The least of two probes: the first call in a process also pays one-time allocations.
            memory = {name: _least(measure(step) for _ in range(2)) for name, step in setup.steps.items()}
        result = summarize(setup, times, memory, host_syncs(setup))
        print(format_result(result, args.markdown), end="\n\n", flush=True)
        results.append(result)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
