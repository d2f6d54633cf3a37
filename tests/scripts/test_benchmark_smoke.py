"""The step benchmark runs end to end at the tiniest settings and reports every variant (no timing checks)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostsync import auto_lirpa_checks_each_node_for_nan

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_step.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_every_variant_is_timed_and_the_ratios_are_printed(benchmark, tmp_path):
    # A separate process: the script sets torch's thread count and (for the CPU memory probe) malloc's
    # thresholds for the rest of its process, which must not leak into the other tests.
    out_json = tmp_path / "bench.json"
    argv = ["--recipe", "mnist", "--batch-size", "4", "--repeats", "2", "--warmup", "0", "--input-size", "8",
            "--threads", "1", "--markdown", "--json", str(out_json)]
    run = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout
    results = json.loads(out_json.read_text())

    assert len(results) == 1
    result = results[0]
    # The MNIST recipe's model, at the tiny input asked for.
    assert (result["experiment"], result["model"], result["in_shape"], result["batch_size"]) == \
        ("mnist_quick", "cnn_4layer", [1, 8, 8], 4)
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == list(benchmark.VARIANTS)
    for name, row in rows.items():
        assert row["median_ms"] > 0 and row["iqr_ms"] >= 0, name
        assert row["ratio_to_plain"] > 0, name
        memory = row["peak_step_memory_bytes"]
        assert memory is None or memory >= 0, name
    assert rows["plain"]["ratio_to_plain"] == pytest.approx(1.0)
    # Every variant's step, the hooks included, runs without a host synchronisation of ours (upstream auto_LiRPA
    # 0.7 syncs inside its own IBP, once per node, counted apart; PyPI's 0.3 does not).
    assert {name: row["host_syncs"] for name, row in rows.items()} == {name: 0 for name in rows}
    # auto_LiRPA's loss fusion syncs inside its own code (its label and last-A checks): counted apart, fused rows only.
    if not auto_lirpa_checks_each_node_for_nan():
        assert {name: row["auto_lirpa_host_syncs"] for name, row in rows.items() if "fused" not in name} == \
            {name: 0 for name in rows if "fused" not in name}
    assert set(result["overheads_percent"]) == {"hooks IBP", "hooks CROWN-IBP", "wrapper IBP", "wrapper CROWN-IBP",
                                                "warm-up regularisers IBP", "hooks CROWN-IBP fused",
                                                "fusion CROWN-IBP", "clean pass skipped",
                                                "kappa 0 vs bare auto_LiRPA"}
    assert "IBP + warm-up regularisers" in rows

    # The Markdown table: a header, an alignment row and one row per variant, in order.
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(benchmark.VARIANTS)
    assert [line.split("|")[1].strip() for line in table[2:]] == list(benchmark.VARIANTS)
    for line in ("hooks overhead", "warm-up regularisers overhead", "wrapper overhead", "IBP step / plain step",
                 "loss fusion (CROWN-IBP fused vs CROWN-IBP", "kappa 0 (the clean logits feed only",
                 "peak step memory:", "host syncs:"):
        assert line in printed

    # The plain-text layout of the same result names every variant too.
    text = benchmark.format_result(result, markdown=False)
    assert all(name in text for name in benchmark.VARIANTS) and "|" not in text


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--recipe", "imagenet"], "invalid choice: 'imagenet'"),
])
def test_bad_arguments_are_refused_by_name(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    assert message in capsys.readouterr().err
