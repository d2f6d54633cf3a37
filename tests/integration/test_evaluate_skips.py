"""Evaluate: nothing run is reported as null with the reason and a failing exit, naming the caller's own key."""
import json
import subprocess
import sys

import torch

from lirpa_reweight.evaluation.robustness import evaluate_classifier
from lirpa_reweight.training.build import build_classifier
from lirpa_reweight.training.run import train

from support import tiny_cfg

INFO = dict(in_shape=[1, 12, 12], num_classes=10, mean=[0.5], std=[0.5])


def batches():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 12, 12, generator=generator), torch.arange(8) % 10
    return [(x, y, torch.arange(8))]


def test_nothing_run_is_null_with_the_reason_naming_the_callers_key():
    classifier = build_classifier("cnn_4layer", INFO)
    result = evaluate_classifier(classifier, batches(), 0.01, methods=["CROWN"], pgd_steps=0, crown_max_relu_units=1,
                                 progress=False, crown_limit_key="eval.crown_max_relu_units")
    assert result["verified_error"] is None and result["verified_error_by_method"] == {"CROWN": None}
    assert "no requested bound method ran" in result["verified_error_reason"]
    assert "(eval.crown_max_relu_units)" in result["skipped"]["CROWN"]
    # One method that runs is enough for a verified error; the reason is then absent.
    both = evaluate_classifier(classifier, batches(), 0.01, methods=["IBP", "CROWN"], pgd_steps=0,
                               crown_max_relu_units=1, progress=False)
    assert both["verified_error"] == both["verified_error_by_method"]["IBP"]
    assert "verified_error_reason" not in both and "(crown_max_relu_units)" in both["skipped"]["CROWN"]


def test_evaluate_cli_exits_non_zero_when_nothing_requested_could_run(tmp_path):
    train(tiny_cfg(tmp_path, "trainer.epochs=1", "eval.methods=[IBP]", "eval.pgd_steps=0"))
    report = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={tmp_path / 'last.pt'}",
                             "methods=[CROWN]", "crown_max_relu_units=1", "pgd_steps=0", "num_test=16",
                             f"output={report}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    written = json.loads(report.read_text())
    assert written["verified_error"] is None and "CROWN skipped" in written["verified_error_reason"]
    messages = result.stdout + result.stderr
    assert "(crown_max_relu_units)" in messages and "eval.crown_max_relu_units" not in messages


def test_evaluate_refuses_a_bad_value_before_reading_the_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={tmp_path / 'none.pt'}",
                             "num_test=0"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "bad config value num_test=0: null" in result.stderr
    assert "checkpoint.py" not in result.stderr and "FileNotFoundError" not in result.stderr
