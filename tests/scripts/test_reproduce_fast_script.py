"""examples/reproduce_fast_cpu.sh end to end on a tiny synthetic stand-in: every kind of run once, the two paired
tables and the time-to-accuracy figure; a second launch resumes (finished runs are skipped)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=128", "data.num_test=64",
        "trainer.batch_size=64", "trainer.epochs=2", "eval.pgd_steps=1", "eval.methods=[IBP]",
        "schedule.eps_train=0.05", "schedule.eps_eval=0.03", "autoeps.maxoff=0.02",
        "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'"]


def test_reproduce_fast_script_writes_both_tables_and_the_time_figure(tmp_path):
    out = tmp_path / "evidence"
    env = {**os.environ, "PY": sys.executable, "SEEDS": "0", "MORE_SEEDS": "1", "VAL_EXAMPLES": "64",
           "OMP_NUM_THREADS": "1"}
    command = ["bash", str(REPO / "examples" / "reproduce_fast_cpu.sh"), str(out), *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    tactics = (out / "mnist_fast_quick" / "summary.md").read_text()
    assert tactics.count("| 2 |") == 4  # four settings, seeds 0 and 1
    assert "baseline" in tactics and tactics.count("(n=2)") == 3
    changes = (out / "mnist_quick" / "summary.md").read_text()
    assert changes.count("| 1 |") == 4  # mnist_quick and each change alone, seed 0
    for change in ("| ibp |", "| shi | 10 |", "| cnn_4layer_bn |"):  # init, regulariser + clip, BN model
        assert change in changes
    assert (out / "time_to_accuracy_mnist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Launched again, every run is found finished and skipped: nothing is retrained.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("has finished") == 12  # 4 + 4 tactics runs, 4 mnist_quick runs
    assert (out / "mnist_fast_quick" / "summary.md").read_text() == tactics
