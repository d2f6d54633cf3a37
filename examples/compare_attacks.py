"""Compare attack settings on a trained run: which examples each attack fools, against AutoAttack and
alpha-beta-CROWN's counterexamples (how the evaluation's default PGD was chosen; docs/verification.md).

    PYTHONPATH=$PWD:PATH/TO/alpha-beta-CROWN python examples/compare_attacks.py RUN_DIR/last.pt \
        --num-examples 500 --eps 0.3 --abcrown-timeout 15 > attacks.json

Only the examples that are clean-correct and not verified by IBP or CROWN-IBP are attacked (no attack can fool
the others). Without alpha-beta-CROWN (``--abcrown-timeout 0``) its column is left out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from lirpa_reweight.evaluation import stages
from lirpa_reweight.evaluation.plan import AbcrownOptions, AttackOptions
from lirpa_reweight.methods.attack import pgd_attack
from lirpa_reweight.training.build import LoaderSpec, load_saved_run, test_loader

#: (name, options): our PGD's settings compared; "ce, random, 20x1" is the evaluation's attack before #21.
SETTINGS = [
    ("margin, centre, 20x1", AttackOptions(steps=20, restarts=1)),
    ("margin, centre, 50x5", AttackOptions(steps=50, restarts=5)),
    ("margin, centre, 100x10", AttackOptions(steps=100, restarts=10)),
    ("ce, centre, 100x10", AttackOptions(steps=100, restarts=10, loss="ce")),
    ("margin, random, 100x10", AttackOptions(steps=100, restarts=10, centre_start=False)),
]


def open_examples(classifier, loader, eps):
    """The examples left open by the clean prediction, IBP and CROWN-IBP: (x, y, indices), and the total."""
    xs, ys, ids, total = [], [], [], 0
    for x, y, index in loader:
        total += len(y)
        keep = ~stages.clean_wrong(classifier, x, y)
        for method in ("IBP", "CROWN-IBP"):
            keep &= ~stages.bound_verified(classifier, x, y, eps, method)
        xs.append(x[keep])
        ys.append(y[keep])
        ids += index[keep].tolist()
    return torch.cat(xs), torch.cat(ys), ids, total


def fooled_sets(classifier, x, y, ids, eps, abcrown_timeout):
    sets, seconds = {}, {}
    started = time.time()
    sets["ce, random, 20x1 (old default)"] = set(
        i for i, f in zip(ids, pgd_attack(classifier, x, y, eps, steps=20).tolist()) if f)
    seconds["ce, random, 20x1 (old default)"] = time.time() - started
    for name, options in SETTINGS:
        started = time.time()
        found = stages.pgd_found(classifier, x, y, eps, ids, options)
        ok, _ = stages.recheck(classifier, found.x_adv, x, y, eps)
        sets[name], seconds[name] = {i for i, f in zip(ids, (ok & found.fooled).tolist()) if f}, time.time() - started
    started = time.time()
    found = stages.autoattack_found(classifier, x, y, eps, AttackOptions())
    ok, _ = stages.recheck(classifier, found.x_adv, x, y, eps)
    sets["AutoAttack APGD-CE+APGD-T 100"] = {i for i, f in zip(ids, (ok & found.fooled).tolist()) if f}
    seconds["AutoAttack APGD-CE+APGD-T 100"] = time.time() - started
    if abcrown_timeout > 0:
        sets["alpha-beta-CROWN"], seconds["alpha-beta-CROWN"], verified = abcrown_column(
            classifier, x, y, ids, eps, abcrown_timeout)
        sets["alpha-beta-CROWN verified"] = verified
    return sets, seconds


def abcrown_column(classifier, x, y, ids, eps, timeout):
    from lirpa_reweight.evaluation.abcrown import PixelNetwork, solver_config, verify_example

    network = PixelNetwork(classifier).eval()
    config = solver_config(AbcrownOptions(timeout=timeout), str(classifier.device))
    falsified, verified, started = set(), set(), time.time()
    for k, i in enumerate(ids):
        verdict = verify_example(network, x[k], int(y[k]), eps, classifier.data_range, config)
        if verdict.outcome == "verified":
            verified.add(i)
        elif verdict.counterexample is not None:
            many = len(verdict.counterexample)
            ok, _ = stages.recheck(classifier, verdict.counterexample, x[k:k + 1].expand(many, *x.shape[1:]),
                                   y[k:k + 1].expand(many), eps)
            if bool(ok.any()):
                falsified.add(i)
        print(f"abcrown {k + 1}/{len(ids)} index {i}: {verdict.status} {verdict.seconds:.1f}s", file=sys.stderr)
    return falsified, time.time() - started, verified


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--num-examples", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--abcrown-timeout", type=float, default=15.0)
    args = parser.parse_args()
    saved = load_saved_run(args.checkpoint, device="cpu")
    classifier = saved.classifier.eval()
    loader = test_loader(saved.data, LoaderSpec(500, 500, None, None), classifier.device,
                         num_examples=args.num_examples)
    x, y, ids, total = open_examples(classifier, loader, args.eps)
    sets, seconds = fooled_sets(classifier, x, y, ids, args.eps, args.abcrown_timeout)
    every = set().union(*(s for name, s in sets.items() if name != "alpha-beta-CROWN verified"))
    report = {"checkpoint": args.checkpoint, "eps": args.eps, "num_examples": total, "open_after_bounds": len(ids),
              "any_attack_fooled": len(every),
              # Soundness: nothing alpha-beta-CROWN verified may be fooled by any attack.
              "abcrown_verified_but_fooled": sorted(sets.get("alpha-beta-CROWN verified", set()) & every),
              "rows": {name: {"fooled": len(s), "missed_of_any": len(every - s) if "verified" not in name else None,
                              "seconds": round(seconds.get(name, 0.0), 1)} for name, s in sets.items()},
              "indices": {name: sorted(s) for name, s in sets.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
