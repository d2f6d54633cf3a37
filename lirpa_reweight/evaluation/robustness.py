"""Test-set robustness by a per-example cascade: each example ends verified by a stage, falsified by a stage (with
its counterexample re-checked by a plain forward pass), or unknown.

The stages (evaluation/plan.py) run cheapest first, each on the examples still open; ``python -m
lirpa_reweight.evaluate`` runs this on a saved run, and training runs it at its end.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Optional, Sequence

import torch
from tqdm import tqdm

from ..core.bounds import BoundedClassifier
from ..models import relu_units
from . import stages
from .examples_log import ExamplesLog
from .plan import (ABCROWN, ALPHA_CROWN_ITERATIONS, CROWN_MAX_RELU_UNITS, FULL_CROWN, AbcrownOptions,  # noqa: F401
                   AttackOptions, Plan, check_options, full_crown_skips, make_plan)

log = logging.getLogger(__name__)

#: The attack stages, in the cascade's order ("clean" is the prediction at x itself).
ATTACKS = ("clean", "pgd", "autoattack")
#: Why an example stays unknown: alpha-beta-CROWN ran out of time (or gave up), claimed a counterexample that the
#: forward pass did not confirm, or no stage decided it.
UNKNOWN_REASONS = ("timeout", "unconfirmed", "open")


def evaluate_classifier(classifier: BoundedClassifier, batches: Iterable, eps: float,
                        methods: Sequence[str] = ("IBP", "CROWN-IBP"), pgd_steps: int = 100,
                        crown_batch_size: int = 16, crown_max_relu_units: int = CROWN_MAX_RELU_UNITS,
                        alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS, progress: bool = True,
                        crown_limit_key: str = "crown_max_relu_units", group=None,
                        attack: Optional[AttackOptions] = None, abcrown: Optional[AbcrownOptions] = None,
                        examples_log: Optional[ExamplesLog] = None) -> dict:
    """Errors on ``batches`` of ``(x, y, index)`` at radius ``eps`` (pixel units) by the cascade of ``methods``.

    ``attack`` is the evaluation's PGD (None: :class:`AttackOptions` with ``pgd_steps``); ``abcrown`` the options
    of alpha-beta-CROWN when ``methods`` holds ``abcrown``. CROWN and alpha-CROWN are skipped, with the reason
    recorded, when the model is too large for them (``crown_limit_key`` names the limit as the caller's user knows
    it). ``verified_by`` counts the examples each verifier settled (each example reaches a verifier only if the
    earlier ones left it open); ``verified_error_by_method[m]`` is the verified error after stage ``m`` (for the
    first method, that method's own). When no requested verifier ran, ``verified_error`` is None and
    ``verified_error_reason`` says why. Under DDP, ``group`` sums the counts of the ranks' shards (each rank
    passes its own ``batches`` and its own ``examples_log``). ``examples_log`` receives each example's record
    and supplies those already done (a resumed evaluation).
    """
    attack = attack if attack is not None else AttackOptions(steps=pgd_steps)
    plan = make_plan(methods, attack, abcrown, crown_max_relu_units, alpha_crown_iterations, crown_limit_key,
                     crown_batch_size)
    if "alpha-CROWN" in plan.methods:
        classifier.bounded.set_bound_opts({"optimize_bound_args": {"iteration": plan.alpha_crown_iterations}})
    classifier.eval()
    skipped: Optional[dict] = None
    records, started = [], time.time()
    for x, y, index in tqdm(batches, desc=f"evaluate eps={eps:g}", disable=not progress, leave=False):
        x, y = x.to(classifier.device), y.to(classifier.device)
        indices = list(range(len(records), len(records) + len(y))) if index is None else [int(i) for i in index]
        if skipped is None:  # the model's size is known from the first batch
            skipped = full_crown_skips(plan, relu_units(classifier.model, classifier.normalize(x[:1])))
        records += _batch_records(classifier, x, y, indices, eps, plan, skipped, examples_log)
    return summarise(records, plan, skipped or {}, eps, time.time() - started, group, classifier.device)


def _batch_records(classifier, x, y, indices, eps, plan, skipped, examples_log) -> list[dict]:
    """The batch's records: those the log already has, the others from the cascade (then logged)."""
    done = examples_log.done if examples_log is not None else {}
    todo = [k for k, i in enumerate(indices) if i not in done]
    fresh = {}
    if todo:
        rows = torch.tensor(todo, device=x.device)
        new = cascade(classifier, x[rows], y[rows], [indices[k] for k in todo], eps, plan, skipped)
        if examples_log is not None:
            examples_log.append(new)
        fresh = {r["index"]: r for r in new}
    return [done[i] if i in done else fresh[i] for i in indices]


def cascade(classifier: BoundedClassifier, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int], eps: float,
            plan: Plan, skipped: dict) -> list[dict]:
    """Each example's record: ``outcome`` (verified / falsified / unknown) and the ``stage`` that decided it."""
    records = [{"index": int(i), "label": int(label), "outcome": "unknown", "stage": None}
               for i, label in zip(indices, y.tolist())]
    open_ = list(range(len(records)))

    def settle(positions, outcome, stage, **extra):
        for k in positions:
            records[k].update(outcome=outcome, stage=stage, **{name: v[k] for name, v in extra.items()})
        taken = set(positions)
        open_[:] = [k for k in open_ if k not in taken]

    settle(_where(stages.clean_wrong(classifier, x, y), range(len(y))), "falsified", "clean")
    for method in plan.methods:
        if method not in skipped and open_:
            rows = torch.tensor(open_, device=x.device)
            settle(_where(stages.bound_verified(classifier, x[rows], y[rows], eps, method,
                                                         plan.crown_batch_size), open_), "verified", method)
    for stage in ("pgd", "autoattack"):
        if open_ and _attack_runs(stage, plan, eps):
            _run_attack(stage, classifier, x, y, indices, eps, plan, open_, settle)
    if plan.abcrown is not None and open_:
        _run_abcrown(classifier, x, y, eps, plan, list(open_), records, settle)
    for k in open_:
        records[k]["unknown_reason"] = records[k].get("unknown_reason", "open")
    return records


def _where(mask: torch.Tensor, positions) -> list:
    positions = list(positions)
    return [positions[j] for j in mask.nonzero().flatten().tolist()]


def _attack_runs(stage: str, plan: Plan, eps: float) -> bool:
    if eps == 0:
        return False
    return plan.attack.steps > 0 if stage == "pgd" else plan.attack.autoattack


def _run_attack(stage, classifier, x, y, indices, eps, plan, open_, settle) -> None:
    """Attack the open examples; settle those whose counterexample the forward pass confirms."""
    rows = torch.tensor(open_, device=x.device)
    xs, ys = x[rows], y[rows]
    if stage == "pgd":
        found = stages.pgd_found(classifier, xs, ys, eps, [indices[k] for k in open_], plan.attack)
    else:
        found = stages.autoattack_found(classifier, xs, ys, eps, plan.attack)
    confirmed, margin = stages.recheck(classifier, found.x_adv, xs, ys, eps)
    confirmed &= found.fooled
    margins = dict(zip(open_, margin.tolist()))
    settle(_where(confirmed, open_), "falsified", stage, margin=margins)


def _run_abcrown(classifier, x, y, eps, plan, positions, records, settle) -> None:
    """alpha-beta-CROWN on each open example, one at a time, within its time limit."""
    from .abcrown import PixelNetwork, solver_config, verify_example

    device = plan.abcrown.device or str(classifier.device)
    network = PixelNetwork(classifier).to(device).eval()
    config = solver_config(plan.abcrown, device)
    for k in positions:
        verdict = verify_example(network, x[k].to(device), int(y[k]), eps, classifier.data_range, config)
        records[k].update(abcrown_status=verdict.status, abcrown_seconds=round(verdict.seconds, 3))
        if verdict.outcome == "verified":
            settle([k], "verified", ABCROWN)
        elif verdict.outcome == "falsified" and verdict.counterexample is not None:
            candidates = verdict.counterexample.to(x.device)
            many = len(candidates)
            confirmed, margin = stages.recheck(classifier, candidates, x[k:k + 1].expand(many, *x.shape[1:]),
                                               y[k:k + 1].expand(many), eps)
            if bool(confirmed.any()):
                settle([k], "falsified", ABCROWN, margin={k: float(margin[confirmed].min())})
            else:
                records[k]["unknown_reason"] = "unconfirmed"
        else:
            records[k]["unknown_reason"] = "unconfirmed" if verdict.outcome == "falsified" else "timeout"


def summarise(records: list, plan: Plan, skipped: dict, eps: float, seconds: float, group=None,
              device=None) -> dict:
    """The result (final.json's evaluation part) from the records, counts summed over ranks under DDP."""
    verifiers = plan.verifiers
    keys = (["examples"] + [f"verified:{v}" for v in verifiers] + [f"falsified:{a}" for a in (*ATTACKS, ABCROWN)]
            + [f"unknown:{r}" for r in UNKNOWN_REASONS])
    counts = dict.fromkeys(keys, 0)
    counts["examples"] = len(records)
    for r in records:
        if r["outcome"] == "unknown":
            counts[f"unknown:{r.get('unknown_reason', 'open')}"] += 1
        else:
            counts[f"{r['outcome']}:{r['stage']}"] += 1
    if group is not None:  # counts, not error rates, are summed: a rate of the whole test set
        import torch.distributed as dist
        summed = torch.tensor(list(counts.values()), dtype=torch.float64, device=device)
        dist.all_reduce(summed, group=group)
        counts = dict(zip(counts, (int(v) for v in summed.tolist())))
    return _result(counts, plan, skipped, eps, seconds)


def _result(counts: dict, plan: Plan, skipped: dict, eps: float, seconds: float) -> dict:
    total = counts["examples"]
    if total == 0:
        raise ValueError("no examples to evaluate")
    ran = [v for v in plan.verifiers if v not in skipped]
    verified, cumulative, by_method = 0, {}, {}
    for v in plan.verifiers:
        verified += counts[f"verified:{v}"]
        cumulative[v] = None if v in skipped else 1 - verified / total
        by_method[v] = None if v in skipped else counts[f"verified:{v}"]
    falsified = {a: counts[f"falsified:{a}"] for a in (*ATTACKS, ABCROWN)}
    result = {
        "eps": eps,
        "num_examples": total,
        "clean_error": falsified["clean"] / total,
        "pgd_error": (falsified["clean"] + falsified["pgd"]) / total,
        "attack_error": (falsified["clean"] + falsified["pgd"] + falsified["autoattack"]) / total,
        # Nothing verified is not 100% verified error: with no method run there is no verified error at all.
        "verified_error": 1 - verified / total if ran else None,
        "verified_error_by_method": cumulative,
        "verified_by": by_method,
        "falsified_by": falsified,
        # The true robust error lies in [robust_error_lower_bound, verified_error].
        "robust_error_lower_bound": sum(falsified.values()) / total,
        "unknown": sum(counts[f"unknown:{r}"] for r in UNKNOWN_REASONS),
        "unknown_by_reason": {r: counts[f"unknown:{r}"] for r in UNKNOWN_REASONS},
        "attack": plan.attack.__dict__,
        "skipped": skipped,
        "seconds": round(seconds, 2),
    }
    if plan.abcrown is not None:
        result["abcrown"] = plan.abcrown.__dict__
    if not ran:
        result["verified_error_reason"] = "no requested bound method ran: " + "; ".join(
            f"{m} skipped: {why}" for m, why in skipped.items())
    return result
