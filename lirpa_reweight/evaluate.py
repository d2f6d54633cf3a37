"""Test-set evaluation: clean error, PGD error and verified error under each bound method.

``python -m lirpa_reweight.evaluate checkpoint=PATH [eps=0.3] [methods=[IBP,CROWN-IBP,CROWN]]``
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import recipe
from .attacks import pgd_attack  # noqa: F401  (re-exported: evaluation's attack lives in attacks.py)
from .bounds import METHODS, BoundedClassifier
from .models import relu_units

log = logging.getLogger(__name__)

#: Full CROWN bounds every hidden unit by a backward pass, so its cost grows with units x input size per example:
#: ~0.1 s per example on CPU for cnn_4layer on MNIST (4804 units), ~10 GB per example for the 32x32 CNNs.
#: Above this many ReLU units per example it is skipped (and the reason recorded) unless asked for.
CROWN_MAX_RELU_UNITS = 2000
#: The methods that bound every hidden unit by a backward pass, and so share that size rule.
FULL_CROWN = ("CROWN", "alpha-CROWN")
#: alpha-CROWN's optimisation steps of the ReLU slopes (auto_LiRPA's default).
ALPHA_CROWN_ITERATIONS = 20


def evaluate_classifier(classifier: BoundedClassifier, batches: Iterable, eps: float,
                        methods: Sequence[str] = ("IBP", "CROWN-IBP"), pgd_steps: int = 20,
                        crown_batch_size: int = 16, crown_max_relu_units: int = CROWN_MAX_RELU_UNITS,
                        alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS, progress: bool = True,
                        crown_limit_key: str = "crown_max_relu_units", group=None) -> dict:
    """Errors on ``batches`` of ``(x, y, index)`` at radius ``eps`` (pixel units).

    An example counts as verified when every margin lower bound is positive; ``verified_error``
    counts an example as verified if any of the methods verifies it. CROWN is skipped, with the
    reason recorded, when the model is too large for it (alpha-CROWN likewise); ``crown_limit_key`` is the name
    the caller's user knows the limit by (``eval.crown_max_relu_units`` in train), quoted in the reason. When no
    requested method ran, ``verified_error`` is None and ``verified_error_reason`` says why.
    ``verified_by`` counts, per method in the order given, the examples it verified that no earlier
    method had: which verifier certified each number. Under DDP, ``group`` sums the counts of the
    ranks' shards of the test set (each rank passes its own ``batches``).
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown bound method {method!r}; allowed: {list(METHODS)}")
    if "alpha-CROWN" in methods:
        if isinstance(alpha_crown_iterations, bool) or not isinstance(alpha_crown_iterations, int) \
                or alpha_crown_iterations < 1:
            raise ValueError(f"alpha_crown_iterations must be an integer >= 1, got {alpha_crown_iterations!r}")
        classifier.bounded.set_bound_opts({"optimize_bound_args": {"iteration": alpha_crown_iterations}})
    classifier.eval()
    methods = list(methods)
    skipped = {}
    counts = {"examples": 0, "clean": 0, "pgd": 0, "any_verified": 0, **{m: 0 for m in methods}}
    first_verified_by = {m: 0 for m in methods}
    started = time.time()
    for x, y, _ in tqdm(batches, desc=f"evaluate eps={eps:g}", disable=not progress, leave=False):
        x, y = x.to(classifier.device), y.to(classifier.device)
        full_crown = [m for m in methods if m in FULL_CROWN]
        if full_crown and counts["examples"] == 0:  # the model's size is known from the first batch
            units = relu_units(classifier.model, classifier.normalize(x))
            if units > crown_max_relu_units:
                for method in full_crown:
                    skipped[method] = (f"the model has {units} ReLU units per example, above the limit of "
                                       f"{crown_max_relu_units} ({crown_limit_key}): full CROWN costs about "
                                       "0.1 s per example on CPU at 5000 units and grows with the model; raise the "
                                       "limit to run it anyway")
                    log.warning("%s skipped: %s", method, skipped[method])
        verified_any = torch.zeros_like(y, dtype=torch.bool)
        with torch.no_grad():
            for method in methods:
                if method in skipped:
                    continue
                # Full CROWN's memory grows with the batch, so it runs in small chunks.
                chunk = crown_batch_size if method in FULL_CROWN else len(y)
                verified = torch.cat([
                    (classifier.margin_lower_bounds(x[i:i + chunk], y[i:i + chunk], eps, method) > 0).all(1)
                    for i in range(0, len(y), chunk)
                ])
                counts[method] += int(verified.sum())
                first_verified_by[method] += int((verified & ~verified_any).sum())
                verified_any |= verified
            counts["clean"] += int((classifier(x).argmax(1) != y).sum())
        with torch.enable_grad():
            counts["pgd"] += int(pgd_attack(classifier, x, y, eps, steps=pgd_steps).sum())
        counts["any_verified"] += int(verified_any.sum())
        counts["examples"] += len(y)
    if group is not None:  # counts, not error rates, are summed: a rate of the whole test set
        import torch.distributed as dist
        local = [*counts.values(), *first_verified_by.values()]
        summed = torch.tensor(local, dtype=torch.float64, device=classifier.device)
        dist.all_reduce(summed, group=group)
        summed = [int(v) for v in summed.tolist()]
        counts = dict(zip(counts, summed[:len(counts)]))
        first_verified_by = dict(zip(first_verified_by, summed[len(counts):]))
    total = counts["examples"]
    if total == 0:
        raise ValueError("no examples to evaluate")
    ran = [m for m in methods if m not in skipped]
    result = {
        "eps": eps,
        "num_examples": total,
        "clean_error": counts["clean"] / total,
        "pgd_error": counts["pgd"] / total,
        # Nothing verified is not 100% verified error: with no method run there is no verified error at all.
        "verified_error": 1 - counts["any_verified"] / total if ran else None,
        "verified_error_by_method": {m: (None if m in skipped else 1 - counts[m] / total) for m in methods},
        "verified_by": {m: (None if m in skipped else first_verified_by[m]) for m in methods},
        "skipped": skipped,
        "seconds": round(time.time() - started, 2),
    }
    if not ran:
        result["verified_error_reason"] = "no requested bound method ran: " + "; ".join(
            f"{m} skipped: {why}" for m, why in skipped.items())
    return result


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate a saved run (``last.pt``/``best.pt``) on its data set's test split."""
    recipe.validate_evaluate(cfg)
    classifier, run_cfg = recipe.classifier_from_checkpoint(cfg.checkpoint, device=cfg.device)
    eps = float(run_cfg.schedule.eps_eval if cfg.eps is None else cfg.eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if cfg.data_root is not None:
        run_cfg.data.root = cfg.data_root
    loader = recipe.test_loader(run_cfg, num_examples=cfg.num_test, batch_size=cfg.batch_size)
    result = evaluate_classifier(classifier, loader, eps, methods=list(cfg.methods), pgd_steps=cfg.pgd_steps,
                                 crown_max_relu_units=cfg.crown_max_relu_units,
                                 alpha_crown_iterations=cfg.alpha_crown_iterations,
                                 crown_limit_key="crown_max_relu_units")
    result["checkpoint"] = str(Path(cfg.checkpoint).resolve())
    return result


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="evaluate")
def main(cfg: DictConfig) -> Optional[float]:
    result = evaluate_checkpoint(cfg)
    print(json.dumps(result, indent=2))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    if result["verified_error"] is None:
        log.error("%s", result["verified_error_reason"])
        sys.exit(1)  # nothing asked for could run: a script must not read the JSON as a result
    return result["verified_error"]


if __name__ == "__main__":
    main()
