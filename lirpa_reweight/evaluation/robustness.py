"""Test-set robustness: clean error, PGD error and verified error under each bound method.

An example counts as verified when every margin lower bound of some method is positive (the union of the
methods); ``python -m lirpa_reweight.evaluate`` runs this on a saved run, and training runs it at its end.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from ..core.bounds import BOUND_METHODS, BoundedClassifier
from ..errors import ArgumentError
from ..methods.attack import pgd_attack
from ..models import relu_units

log = logging.getLogger(__name__)

#: Full CROWN bounds every hidden unit by a backward pass, so its cost grows with units x input size per example:
#: ~0.1 s per example on CPU for cnn_4layer on MNIST (4804 units), ~10 GB per example for the 32x32 CNNs.
#: Above this many ReLU units per example it is skipped (and the reason recorded) unless asked for.
CROWN_MAX_RELU_UNITS = 2000
#: The methods that bound every hidden unit by a backward pass, and so share that size rule.
FULL_CROWN = ("CROWN", "alpha-CROWN")
#: alpha-CROWN's optimisation steps of the ReLU slopes (auto_LiRPA's default).
ALPHA_CROWN_ITERATIONS = 20


def check_options(methods: Sequence[str], alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS) -> None:
    """Refuse what :func:`evaluate_classifier` cannot run, naming the argument (before any work)."""
    if (isinstance(methods, str) or not methods or len(set(methods)) != len(methods)
            or any(m not in BOUND_METHODS for m in methods)):
        raise ArgumentError("methods", list(methods) if not isinstance(methods, str) else methods,
                            f"a non-empty list without repeats drawn from {list(BOUND_METHODS)}")
    if isinstance(alpha_crown_iterations, bool) or not isinstance(alpha_crown_iterations, int) \
            or alpha_crown_iterations < 1:
        raise ArgumentError("alpha_crown_iterations", alpha_crown_iterations, "an integer >= 1")


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
    check_options(methods, alpha_crown_iterations)
    if "alpha-CROWN" in methods:
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
