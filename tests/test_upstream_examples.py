"""The drop-in diffs, applied to upstream auto_LiRPA's own example scripts and run on synthetic data.

examples/upstream_simple_training.diff and examples/upstream_cifar_training.diff are unified diffs against
examples/vision/{simple_training,cifar_training}.py of the upstream snapshot in ../shared/upstream/
(``$LIRPA_UPSTREAM_DIR`` overrides where it is looked for). The runs need upstream's API (what those scripts
call), so they are skipped, saying why, on an auto_LiRPA without it (PyPI's 0.3).
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import lirpa_reweight  # noqa: F401 (patches auto_LiRPA first)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RUNNER = Path(__file__).with_name("upstream_runner.py")
DIFFS = {name: EXAMPLES / f"upstream_{name}.diff" for name in ("simple_training", "cifar_training")}


def upstream_dir() -> Path:
    return Path(os.environ.get("LIRPA_UPSTREAM_DIR") or ROOT.parent / "shared" / "upstream")


def snapshot():
    found = sorted(upstream_dir().glob("auto_LiRPA-*.tar.gz"))
    return found[-1] if found else None


def upstream_api_gap():
    """Why upstream's example scripts cannot run on the installed auto_LiRPA, or None.

    Checked by feature: the scripts pass ``bound_opts={'activation_bound_option': ...}`` (read by upstream's
    activation bounds since 0.4; 0.3 silently ignores it) and cifar_training imports ``utils.sync_params``.
    """
    import inspect

    import auto_LiRPA.utils
    from auto_LiRPA.operators import BoundRelu

    if "activation_bound_option" not in inspect.getsource(sys.modules[BoundRelu.__module__]):
        return "this auto_LiRPA's ReLU does not read bound_opts['activation_bound_option'] (upstream 0.4+ API)"
    if not hasattr(auto_LiRPA.utils, "sync_params"):
        return "this auto_LiRPA has no auto_LiRPA.utils.sync_params (upstream 0.4+ API)"
    return None


def _skip_reason():
    if snapshot() is None:
        return f"no upstream auto_LiRPA snapshot under {upstream_dir()} (set LIRPA_UPSTREAM_DIR)"
    if shutil.which("patch") is None:
        return "the patch tool is not installed"
    return upstream_api_gap()


needs_upstream = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def extract_examples(dest: Path) -> Path:
    """The snapshot's examples/vision/ unpacked under ``dest``; returns the directory that holds examples/."""
    with tarfile.open(snapshot()) as tar:
        members = [m for m in tar.getmembers() if "/examples/vision/" in m.name and (m.isfile() or m.isdir())]
        tar.extractall(dest, members=members)
    (top,) = {Path(m.name).parts[0] for m in members}
    return dest / top


def apply_diff(name: str, tmp_path: Path) -> Path:
    top = extract_examples(tmp_path)
    out = subprocess.run(["patch", "-p1", "--forward", "-i", str(DIFFS[name])], cwd=top, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout and "offset" not in out.stdout and "fuzz" not in out.stdout, out.stdout
    return top / "examples" / "vision" / f"{name}.py"


def run_script(script: Path, n_train: int, n_test: int, *args: str) -> dict:
    out_json = script.parent / "record.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(RUNNER), str(out_json), str(n_train), str(n_test), str(script), *args],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return json.loads(out_json.read_text())


def robust_ce_and_loss_pairs(events):
    """(robust CE the script computed, our loss) per bounded batch: the CE call right before each of our calls."""
    pairs = []
    for k, (kind, value) in enumerate(events):
        if kind == "reweighted":
            assert k > 0 and events[k - 1][0] == "ce", events[max(0, k - 2):k + 1]
            pairs.append((events[k - 1][1], value))
    return pairs


# --- the diffs as files and in the README ---------------------------------------------------------


def test_readme_carries_the_simple_training_diff_verbatim_and_counts_its_lines():
    readme = (ROOT / "README.md").read_text()
    diff = DIFFS["simple_training"].read_text()
    assert f"```diff\n{diff}```" in readme
    lines = diff.splitlines()
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in lines if line.startswith("-") and not line.startswith("---")]
    assert all("lirpa_reweight" in line for line in added)
    assert f"{len(added)} lines added and {len(removed)} removed" in readme


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_every_added_line_is_marked(name):
    added = [line for line in DIFFS[name].read_text().splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert added and all("lirpa_reweight" in line for line in added)


@pytest.mark.skipif(snapshot() is None or shutil.which("patch") is None, reason="no upstream snapshot or patch tool")
@pytest.mark.parametrize("name", sorted(DIFFS))
def test_diff_applies_cleanly_to_upstreams_file(name, tmp_path):
    patched = apply_diff(name, tmp_path)
    text = patched.read_text()
    assert "lirpa_reweight.AutoEpsScheduler(" in text and "len(train_data.dataset)" in text
    # the box stays in upstream's normalised space: the per-example radius is divided by the loader's std
    assert "eps_scheduler.eps(idx).view(-1,1,1,1) / loader.std.view(1,-1,1,1)" in text
    # a bare FixedScheduler has no .eps(idx): every one the script makes is wrapped
    calls = [line for line in text.splitlines() if "FixedScheduler(" in line and "import" not in line]
    assert calls and all("AutoEpsScheduler(FixedScheduler(" in line for line in calls), calls


# --- running upstream's simple_training.py with the hooks ------------------------------------------

MNIST_ARGS = ("--device", "cpu", "--data", "MNIST", "--model", "cnn_4layer", "--bound_type", "IBP",
              "--batch_size", "32", "--scheduler_name", "FixedScheduler", "--scheduler_opts", "")


@needs_upstream
def test_simple_training_with_gamma0_maxoff0_is_the_files_own_robust_ce(tmp_path):
    script = apply_diff("simple_training", tmp_path)
    record = run_script(script, 96, 32, *MNIST_ARGS, "--num_epochs", "1", "--eps", "0.1", "--gamma", "0",
                        "--maxoff", "0")
    pairs = robust_ce_and_loss_pairs(record["events"])
    assert len(pairs) == 3 + 1  # 3 training batches, 1 evaluation batch
    for robust_ce, loss in pairs:
        assert math.isclose(loss, robust_ce, rel_tol=1e-6, abs_tol=1e-7), (loss, robust_ce)
    (scheduler,) = record["schedulers"]
    assert scheduler["num_examples"] == 96 and not any(scheduler["offsets"])
    assert all(r["eps"] == [pytest.approx(0.1)] * len(r["eps"]) for r in record["radii"])


@needs_upstream
def test_simple_training_with_the_hooks_moves_offsets_and_trains_at_them(tmp_path):
    script = apply_diff("simple_training", tmp_path)
    record = run_script(script, 96, 32, *MNIST_ARGS, "--num_epochs", "2", "--eps", "0.3", "--gamma", "5",
                        "--maxoff", "0.15")
    (scheduler,) = record["schedulers"]
    offsets = scheduler["offsets"]
    assert sum(o > 0 for o in offsets) > 0 and max(offsets) <= 0.15 + 1e-6
    train_radii = [e for r in record["radii"] if r["training"] for e in r["eps"]]
    assert len(train_radii) == 2 * 96 and min(train_radii) < 0.3 - 1e-6  # the second epoch trains at reduced eps
    pairs = robust_ce_and_loss_pairs(record["events"])
    assert any(not math.isclose(loss, ce, rel_tol=1e-4) for ce, loss in pairs)  # the re-weighting is active


@needs_upstream
def test_simple_training_verify_path_runs_with_the_wrapped_fixed_scheduler(tmp_path):
    script = apply_diff("simple_training", tmp_path)
    record = run_script(script, 64, 40, *MNIST_ARGS, "--verify", "--eps", "0.2")
    assert len(robust_ce_and_loss_pairs(record["events"])) == 2  # 40 test examples, batches of 32
    assert [e for r in record["radii"] for e in r["eps"]] == [pytest.approx(0.2)] * 40
    assert not any(r["training"] for r in record["radii"])


# --- running upstream's cifar_training.py --no_loss_fusion with the hooks ---------------------------


@needs_upstream
def test_cifar_training_without_loss_fusion_runs_the_hooks(tmp_path):
    script = apply_diff("cifar_training", tmp_path)
    record = run_script(script, 64, 32, "--device", "cpu", "--no_loss_fusion", "--model", "cnn_4layer",
                        "--bound_type", "IBP", "--batch_size", "32", "--num_epochs", "2", "--eps", "0.03",
                        "--scheduler_name", "LinearScheduler", "--scheduler_opts", "start=1,length=1",
                        "--gamma", "5", "--maxoff", "0.01")
    train_scheduler = next(s for s in record["schedulers"] if s["num_examples"] == 64)
    assert sum(o > 0 for o in train_scheduler["offsets"]) > 0 and max(train_scheduler["offsets"]) <= 0.01 + 1e-6
    # 2 epochs x (2 training batches + 2 evaluation batches of 16), less the first batch: the linear ramp
    # starts it at eps 0, which upstream's script trains naturally (no bounds)
    assert len(robust_ce_and_loss_pairs(record["events"])) == 8 - 1
