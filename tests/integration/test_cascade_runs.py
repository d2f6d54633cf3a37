"""The cascade at the end of training and in ``evaluate``: per-example records that add up to final.json, and a
resumed ``evaluate`` that gives the same result."""
import json
import subprocess
import sys
from collections import Counter

from lirpa_reweight.training.run import train

from support import tiny_cfg


def test_final_examples_log_adds_up_to_final_json_and_evaluate_resumes_from_its_log(tmp_path):
    final = train(tiny_cfg(tmp_path, "trainer.epochs=1", "eval.pgd_restarts=2"))
    lines = (tmp_path / "final_examples.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0])["header"], [json.loads(line) for line in lines[1:]]
    assert len(records) == final["num_examples"] == 64 and header["eps"] == final["eps"]
    stages = Counter((r["outcome"], r["stage"]) for r in records)
    assert {m: stages[("verified", m)] for m in final["verified_by"]} == final["verified_by"]
    assert {s: stages[("falsified", s)] for s in final["falsified_by"]} == final["falsified_by"]
    assert stages[("unknown", None)] == final["unknown"]

    log, results = tmp_path / "eval.jsonl", []
    for _ in range(2):  # the second run reads every example from the log
        out = tmp_path / f"eval{len(results)}.json"
        subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={tmp_path / 'last.pt'}",
                        "methods=[IBP,CROWN-IBP]", "pgd_steps=3", "pgd_restarts=2", "num_test=32",
                        f"examples_log={log}", f"output={out}"], cwd=tmp_path, check=True, capture_output=True,
                       timeout=300)
        results.append({k: v for k, v in json.loads(out.read_text()).items() if k != "seconds"})
    assert results[0] == results[1] and len(log.read_text().splitlines()) == 33
    refused = subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={tmp_path / 'last.pt'}",
                              "methods=[IBP,CROWN-IBP]", "eps=0.01", "num_test=32", f"examples_log={log}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "bad config value examples_log=" in refused.stderr
    assert "Traceback" not in refused.stderr
