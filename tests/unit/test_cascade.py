"""The evaluation cascade on small constructed networks (PyPI line; alpha-beta-CROWN's own tests are in
tests/integration/test_abcrown.py)."""
import importlib.util

import pytest
import torch
from torch import nn

from lirpa_reweight.core.bounds import BoundedClassifier
from lirpa_reweight.errors import ArgumentError
from lirpa_reweight.evaluation import robustness, stages
from lirpa_reweight.evaluation.examples_log import ExamplesLog
from lirpa_reweight.evaluation.plan import AttackOptions, check_options

HAS_TORCHATTACKS = importlib.util.find_spec("torchattacks") is not None


def threshold_classifier(threshold=0.4):
    """z_0 = x, z_1 = threshold: class 0 exactly where x > threshold (one pixel)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, threshold]))
    return BoundedClassifier(model, torch.zeros(1, 1, 1, 1), device="cpu")


def mlp_classifier(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))
    return BoundedClassifier(model, torch.zeros(1, 1, 4, 4), device="cpu")


def mlp_batches(n=40, batch=10):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = mlp_classifier()(x).argmax(1)  # clean-correct by construction: the cascade has something to decide
    y[::7] = (y[::7] + 1) % 3  # and a few clean errors
    return [(x[i:i + batch], y[i:i + batch], torch.arange(i, i + batch)) for i in range(0, n, batch)]


def test_a_known_counterexample_is_returned_by_pgd_and_rechecked():
    classifier = threshold_classifier(0.4)
    x, y = torch.tensor([[[[0.5]]], [[[0.9]]]]), torch.tensor([0, 0])
    result = robustness.evaluate_classifier(classifier, [(x, y, torch.tensor([0, 1]))], 0.2,
                                            methods=["IBP"], progress=False)
    # Example 0: box [0.3, 0.7] holds x = 0.3 < 0.4 (margin -0.1 at the corner); example 1 is verified.
    assert result["falsified_by"]["pgd"] == 1 and result["verified_by"]["IBP"] == 1
    records = robustness.cascade(classifier, x, y, [0, 1], 0.2, robustness.make_plan(["IBP"]), {})
    assert records[0]["outcome"] == "falsified" and records[0]["stage"] == "pgd"
    # PGD keeps the first misclassified point of its path: a point in [0.3, 0.4), margin in [-0.1, 0).
    assert -0.1 - 1e-6 <= records[0]["margin"] < 0
    assert records[1] == {"index": 1, "label": 0, "outcome": "verified", "stage": "IBP"}


def test_recheck_refuses_a_misclassified_point_outside_the_clamped_box():
    classifier = threshold_classifier(0.4)
    x, y = torch.tensor([[[[0.5]]]]), torch.tensor([0])
    outside = torch.tensor([[[[0.0]]]])  # misclassified, but 0.5 from x at eps 0.2
    ok, margin = stages.recheck(classifier, outside, x, y, 0.2)
    assert not bool(ok[0])
    ok, margin = stages.recheck(classifier, torch.tensor([[[[0.35]]]]), x, y, 0.2)
    assert bool(ok[0]) and float(margin[0]) == pytest.approx(-0.05, abs=1e-6)


def count_calls(monkeypatch):
    """Record, per stage, the dataset indices each call received (bounds are told by their ``method``)."""
    seen = {}
    bound, pgd = stages.bound_verified, stages.pgd_found

    def bound_spy(classifier, x, y, eps, method, *rest):
        seen.setdefault(method, []).append(len(y))
        return bound(classifier, x, y, eps, method, *rest)

    def pgd_spy(classifier, x, y, eps, indices, options):
        seen.setdefault("pgd", []).extend(indices)
        return pgd(classifier, x, y, eps, indices, options)

    monkeypatch.setattr(stages, "bound_verified", bound_spy)
    monkeypatch.setattr(stages, "pgd_found", pgd_spy)
    return seen


def test_an_example_verified_by_ibp_never_reaches_a_later_stage(monkeypatch):
    classifier, batches = mlp_classifier(), mlp_batches()
    seen = count_calls(monkeypatch)
    records = []
    for x, y, index in batches:
        records += robustness.cascade(classifier, x, y, index.tolist(), 0.02,
                                      robustness.make_plan(["IBP", "CROWN-IBP", "CROWN"]), {})
    by_ibp = {r["index"] for r in records if r["stage"] == "IBP"}
    clean_wrong = {r["index"] for r in records if r["stage"] == "clean"}
    assert by_ibp and clean_wrong  # the radius leaves IBP something to verify
    assert sum(seen["IBP"]) == len(records) - len(clean_wrong)
    assert sum(seen["CROWN-IBP"]) == len(records) - len(clean_wrong) - len(by_ibp)
    by_crown_ibp = {r["index"] for r in records if r["stage"] == "CROWN-IBP"}
    assert sum(seen["CROWN"]) == len(records) - len(clean_wrong) - len(by_ibp) - len(by_crown_ibp)
    assert not (set(seen.get("pgd", [])) & (by_ibp | clean_wrong))


def test_verified_examples_survive_pgd_and_sampling_and_counts_add_up():
    classifier, batches = mlp_classifier(), mlp_batches()
    result = robustness.evaluate_classifier(classifier, batches, 0.03, methods=["IBP", "CROWN"], progress=False,
                                            attack=AttackOptions(steps=50, restarts=3))
    total = result["num_examples"]
    decided = sum(v for v in result["verified_by"].values()) + sum(result["falsified_by"].values())
    assert decided + result["unknown"] == total and result["unknown_by_reason"]["open"] == result["unknown"]
    assert result["robust_error_lower_bound"] <= result["verified_error"] + 1e-12
    records = []
    for x, y, index in batches:
        records += robustness.cascade(classifier, x, y, index.tolist(), 0.03, robustness.make_plan(["IBP", "CROWN"]), {})
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    verified = torch.tensor([r["outcome"] == "verified" for r in records])
    gen = torch.Generator().manual_seed(5)
    low, high = classifier.input_box(x[verified], 0.03)
    for _ in range(20):  # uniform samples and the box's corners-ish extremes
        point = low + (high - low) * torch.rand(low.shape, generator=gen)
        assert (classifier(point).argmax(1) == y[verified]).all()
    strong = stages.pgd_found(classifier, x[verified], y[verified], 0.03, list(range(int(verified.sum()))),
                              AttackOptions(steps=100, restarts=5))
    assert not strong.fooled.any()


def test_pgd_outcome_of_an_example_does_not_depend_on_its_batch():
    classifier, batches = mlp_classifier(), mlp_batches()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    options = AttackOptions(steps=5, restarts=3, centre_start=False)
    together = stages.pgd_found(classifier, x, y, 0.05, list(range(len(y))), options)
    alone = [stages.pgd_found(classifier, x[k:k + 1], y[k:k + 1], 0.05, [k], options) for k in range(len(y))]
    assert together.fooled.tolist() == [bool(a.fooled[0]) for a in alone]


class Interrupted(Exception):
    pass


def interrupt_after(batches, n):
    for k, batch in enumerate(batches):
        if k == n:
            raise Interrupted
        yield batch


def test_an_interrupted_evaluation_resumed_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    classifier, batches = mlp_classifier(), mlp_batches()
    options = dict(methods=["IBP", "CROWN-IBP"], progress=False, attack=AttackOptions(steps=10, restarts=2))
    whole = robustness.evaluate_classifier(classifier, batches, 0.03, **options)
    header = {"model": "m", "eps": 0.03}
    with pytest.raises(Interrupted):
        robustness.evaluate_classifier(classifier, interrupt_after(batches, 2), 0.03,
                                       examples_log=ExamplesLog(tmp_path / "ex.jsonl", header), **options)
    with (tmp_path / "ex.jsonl").open("a") as handle:
        handle.write('{"index": 25, "lab')  # a line torn by the interruption
    log = ExamplesLog(tmp_path / "ex.jsonl", header)
    assert sorted(log.done) == list(range(20))
    seen = count_calls(monkeypatch)
    resumed = robustness.evaluate_classifier(classifier, batches, 0.03, examples_log=log, **options)
    assert sum(seen["IBP"]) <= 20  # only the second half is evaluated again
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(resumed) == strip(whole)
    with pytest.raises(ArgumentError, match="examples_log"):
        ExamplesLog(tmp_path / "ex.jsonl", {"model": "other", "eps": 0.03})


@pytest.mark.skipif(not HAS_TORCHATTACKS, reason="torchattacks is not installed (pip install .[attack])")
def test_autoattack_finds_the_known_counterexample_that_pgd_was_not_asked_for():
    classifier = threshold_classifier(0.4)
    x, y = torch.tensor([[[[0.5]]], [[[0.9]]]]), torch.tensor([0, 0])
    result = robustness.evaluate_classifier(classifier, [(x, y, torch.tensor([0, 1]))], 0.2, methods=["IBP"],
                                            progress=False, attack=AttackOptions(steps=0, autoattack=True))
    assert result["falsified_by"] == {"clean": 0, "pgd": 0, "autoattack": 1, "abcrown": 0}
    assert result["attack_error"] == 0.5 and result["pgd_error"] == 0.0


def test_asking_for_abcrown_where_it_is_not_importable_is_refused_in_one_line():
    if importlib.util.find_spec("abcrown") is not None:
        pytest.skip("alpha-beta-CROWN is importable here")
    with pytest.raises(ArgumentError) as error:
        check_options(["IBP", "abcrown"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("bad value methods='abcrown': alpha-beta-CROWN is not importable")
    assert "github.com/Verified-Intelligence/alpha-beta-CROWN" in message


def test_an_abcrown_timeout_is_unknown_and_an_unconfirmed_counterexample_is_not_falsified(monkeypatch):
    """The mapping of alpha-beta-CROWN's answers, with its solver replaced by scripted answers (its real runs are
    tested in tests/integration/test_abcrown.py)."""
    from lirpa_reweight.evaluation import abcrown
    from lirpa_reweight.evaluation import plan as plan_module

    classifier = threshold_classifier(0.4)
    answers = {0.5: abcrown.Verdict("unknown", "unknown", None, 3.0),  # ran out of time
               0.6: abcrown.Verdict("falsified", "unsafe-bab", torch.tensor([[[0.6]]]), 0.1),  # not a counterexample
               0.9: abcrown.Verdict("verified", "safe", None, 0.1)}
    monkeypatch.setattr(abcrown, "require_abcrown", lambda: None)
    monkeypatch.setattr(plan_module, "require_abcrown", lambda: None)  # the plan's check before any work
    monkeypatch.setattr(abcrown, "solver_config", lambda options, device: {})
    monkeypatch.setattr(abcrown, "verify_example",
                        lambda network, x, y, eps, data_range, config: answers[round(float(x.flatten()[0]), 3)])
    x, y = torch.tensor([[[[0.5]]], [[[0.6]]], [[[0.9]]]]), torch.tensor([0, 0, 0])
    plan = robustness.make_plan(["abcrown"], AttackOptions(steps=0))
    records = robustness.cascade(classifier, x, y, [0, 1, 2], 0.2, plan, {})
    assert [(r["outcome"], r.get("unknown_reason")) for r in records] == [
        ("unknown", "timeout"), ("unknown", "unconfirmed"), ("verified", None)]
    assert records[0]["abcrown_status"] == "unknown" and records[2]["stage"] == "abcrown"
