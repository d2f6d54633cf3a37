"""Test-set evaluation: clean error, PGD error and verified error under each bound method.

``python -m lirpa_reweight.evaluate checkpoint=PATH [eps=0.3] [methods=[IBP,CROWN-IBP,CROWN]]``
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from . import recipe
from .bounds import METHODS, BoundedClassifier

log = logging.getLogger(__name__)

#: Full CROWN bounds every hidden unit by a backward pass, so its cost grows with units x input size per example:
#: ~0.1 s per example on CPU for cnn_4layer on MNIST (4804 units), ~10 GB per example for the 32x32 CNNs.
#: Above this many ReLU units per example it is skipped (and the reason recorded) unless asked for.
CROWN_MAX_RELU_UNITS = 2000


def relu_units(model: nn.Module, example: torch.Tensor) -> int:
    """How many ReLU outputs one example produces: the size of the problem full CROWN must bound."""
    count = 0

    def hook(_module, _inputs, output):
        nonlocal count
        count += output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return count


def pgd_attack(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float,
               steps: int = 20, restarts: int = 1, step_size: Optional[float] = None) -> torch.Tensor:
    """L-inf PGD on the cross-entropy, in pixel space, clamped to the data range.

    Returns a boolean ``(B,)`` tensor: True where some restart found a misclassified point.
    """
    low, high = classifier.data_range
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    fooled = classifier(x).argmax(1) != y
    if eps == 0 or steps == 0:
        return fooled
    x_low, x_high = (x - eps).clamp(low, high), (x + eps).clamp(low, high)
    for _ in range(restarts):
        delta = torch.empty_like(x).uniform_(-eps, eps)
        x_adv = torch.max(torch.min(x + delta, x_high), x_low)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(classifier(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.max(torch.min(x_adv.detach() + step_size * grad.sign(), x_high), x_low)
        with torch.no_grad():
            fooled |= classifier(x_adv).argmax(1) != y
    return fooled


def evaluate_classifier(classifier: BoundedClassifier, batches: Iterable, eps: float,
                        methods: Sequence[str] = ("IBP", "CROWN-IBP"), pgd_steps: int = 20,
                        crown_batch_size: int = 16, crown_max_relu_units: int = CROWN_MAX_RELU_UNITS,
                        progress: bool = True, group=None) -> dict:
    """Errors on ``batches`` of ``(x, y, index)`` at radius ``eps`` (pixel units).

    An example counts as verified when every margin lower bound is positive; ``verified_error``
    counts an example as verified if any of the methods verifies it. CROWN is skipped, with the
    reason recorded, when the model is too large for it. Under DDP, ``group`` sums the counts of the
    ranks' shards of the test set (each rank passes its own ``batches``).
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown bound method {method!r}; allowed: {list(METHODS)}")
    classifier.eval()
    methods = list(methods)
    skipped = {}
    counts = {"examples": 0, "clean": 0, "pgd": 0, "any_verified": 0, **{m: 0 for m in methods}}
    started = time.time()
    for x, y, _ in tqdm(batches, desc=f"evaluate eps={eps:g}", disable=not progress, leave=False):
        x, y = x.to(classifier.device), y.to(classifier.device)
        if "CROWN" in methods and counts["examples"] == 0:  # the model's size is known from the first batch
            units = relu_units(classifier.model, classifier.normalize(x))
            if units > crown_max_relu_units:
                skipped["CROWN"] = (f"the model has {units} ReLU units per example, above the limit of "
                                    f"{crown_max_relu_units} (eval.crown_max_relu_units): full CROWN costs about "
                                    "0.1 s per example on CPU at 5000 units and grows with the model; raise the limit "
                                    "to run it anyway")
                log.warning("CROWN skipped: %s", skipped["CROWN"])
        verified_any = torch.zeros_like(y, dtype=torch.bool)
        with torch.no_grad():
            for method in methods:
                if method in skipped:
                    continue
                # Full CROWN's memory grows with the batch, so it runs in small chunks.
                chunk = crown_batch_size if method == "CROWN" else len(y)
                verified = torch.cat([
                    (classifier.margin_lower_bounds(x[i:i + chunk], y[i:i + chunk], eps, method) > 0).all(1)
                    for i in range(0, len(y), chunk)
                ])
                counts[method] += int(verified.sum())
                verified_any |= verified
            counts["clean"] += int((classifier(x).argmax(1) != y).sum())
        with torch.enable_grad():
            counts["pgd"] += int(pgd_attack(classifier, x, y, eps, steps=pgd_steps).sum())
        counts["any_verified"] += int(verified_any.sum())
        counts["examples"] += len(y)
    if group is not None:  # counts, not error rates, are summed: a rate of the whole test set
        import torch.distributed as dist
        summed = torch.tensor([counts[k] for k in counts], dtype=torch.float64, device=classifier.device)
        dist.all_reduce(summed, group=group)
        counts = {k: int(v) for k, v in zip(counts, summed.tolist())}
    total = counts["examples"]
    if total == 0:
        raise ValueError("no examples to evaluate")
    return {
        "eps": eps,
        "num_examples": total,
        "clean_error": counts["clean"] / total,
        "pgd_error": counts["pgd"] / total,
        "verified_error": 1 - counts["any_verified"] / total,
        "verified_error_by_method": {m: (None if m in skipped else 1 - counts[m] / total) for m in methods},
        "skipped": skipped,
        "seconds": round(time.time() - started, 2),
    }


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate a saved run (``last.pt``/``best.pt``) on its data set's test split."""
    classifier, run_cfg = recipe.classifier_from_checkpoint(cfg.checkpoint, device=cfg.device)
    eps = float(run_cfg.schedule.eps_eval if cfg.eps is None else cfg.eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if cfg.data_root is not None:
        run_cfg.data.root = cfg.data_root
    loader = recipe.test_loader(run_cfg, num_examples=cfg.num_test, batch_size=cfg.batch_size)
    result = evaluate_classifier(classifier, loader, eps, methods=list(cfg.methods), pgd_steps=cfg.pgd_steps,
                                 crown_max_relu_units=cfg.crown_max_relu_units)
    result["checkpoint"] = str(Path(cfg.checkpoint).resolve())
    return result


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    result = evaluate_checkpoint(cfg)
    print(json.dumps(result, indent=2))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    return result["verified_error"]


if __name__ == "__main__":
    main()
