"""The GPU machine's kit and check script (docs/gpu.md), as far as they can be checked without a GPU or network:
the kit's size check and device command, gpu_check.sh's environment step and summary, the epoch benchmark."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT_SCRIPT = REPO / "benchmarks" / "device_kit.sh"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["environment", "data", "cuda_tests", "benchmark", "benchmark_epoch", "train_mnist_quick", "train_cifar_sabr",
         "train_cifar_ccibp_2_255", "train_cifar_mtlibp", "test_suite"]


def in_git_checkout() -> bool:
    try:
        return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def kit(*args, env=None, timeout=60):
    return subprocess.run(["bash", str(KIT_SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not in_git_checkout(), reason="what travels is told by git (the GPU machine's copy has no .git)")
def test_the_size_check_refuses_a_kit_over_the_device_limit(tmp_path):
    folder = tmp_path / "kit"
    folder.mkdir()
    (folder / "big.whl").write_bytes(b"\0" * (2 << 20))  # 2 MiB of kit on top of the working tree
    refused = kit("--check-size", str(folder), env={"LIMIT_MIB": "2"})
    assert refused.returncode == 1 and "over the device's limit" in refused.stderr, refused.stdout + refused.stderr
    accepted = kit("--check-size", str(folder))
    assert accepted.returncode == 0, accepted.stderr
    tree, kit_mib, total = map(float, re.search(r"working tree ([\d.]+) MiB \+ kit ([\d.]+) MiB = ([\d.]+) MiB of 64",
                                                accepted.stdout).groups())
    assert kit_mib == pytest.approx(2.0, abs=0.05) and total == pytest.approx(tree + kit_mib, abs=0.15)


def test_the_device_command_fits_the_device_tool_and_is_the_documented_one():
    command = kit("--command").stdout.strip()
    assert len(command) <= 2000 and "\n" not in command
    assert "pip install -q --no-index --no-deps" in command and "--target /tmp/site .device-kit/*.whl" in command
    assert command.endswith("bash benchmarks/gpu_check.sh $OUT/gc")
    assert command in (REPO / "docs" / "gpu.md").read_text()


def test_the_source_hash_names_the_sources():
    first, second = kit("--source-hash").stdout.strip(), kit("--source-hash").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", first) and first == second


def run_gpu_check(tmp_path, kit_dir, skip):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("UNPACK_MNIST", "MNIST_ROOT", "SUITE_ARGS")}
    env.update(PY=sys.executable, DEVICE="cpu", KIT=str(kit_dir), WORK=str(tmp_path / "work"), SKIP=" ".join(skip))
    run = subprocess.run(["bash", str(GPU_CHECK), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    return run, out


def test_gpu_check_runs_its_environment_step_on_a_cpu_and_writes_few_files_with_a_valid_summary(tmp_path):
    stale = tmp_path / "kit"
    stale.mkdir()
    (stale / "kit.json").write_text(json.dumps({"python": "3.12", "source_hash": "0" * 16, "commit": "abc"}))
    run, out = run_gpu_check(tmp_path, stale, STEPS[1:])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True and summary["device"] == "cpu"
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert [s["status"] for s in summary["steps"]] == ["failed"] + ["skipped"] * (len(STEPS) - 1)
    env = summary["details"]["environment"]
    assert env["torch"] and isinstance(env["cuda_available"], bool) and env["compat_patches"] is not None
    assert env["kit"]["source_hash"] == "0" * 16 and "rebuild the kit" in env["problems"][0]
    # What a device call brings back: at most 8 files, in letters, digits, '.', '_' and '-'.
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert "=== environment" in (out / "gpu_check.log").read_text()

    # Without a kit the step passes (a GPU machine with an editable install, say).
    run, out = run_gpu_check(tmp_path, tmp_path / "no_kit", STEPS[1:])
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps[0]["status"] == "passed", run.stdout[-3000:]


def test_the_epoch_benchmark_times_a_clean_and_an_ibp_epoch(tmp_path):
    out = tmp_path / "epoch.json"
    argv = ["--epoch", "--epoch-examples", "12", "--batch-size", "4", "--epoch-rounds", "1", "--input-size", "8",
            "--threads", "1", "--json", str(out)]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "benchmark_step.py"), *argv], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert (result["model"], result["batches"], result["in_shape"]) == ("cnn_7layer", 3, [3, 8, 8])
    assert result["clean_epoch_s"] > 0 and result["ibp_epoch_s"] > 0
    assert result["ibp_over_clean"] == pytest.approx(result["ibp_epoch_s"] / result["clean_epoch_s"])
    assert "IBP / clean" in run.stdout and "Shi et al. 2021: 1.8x" in run.stdout
