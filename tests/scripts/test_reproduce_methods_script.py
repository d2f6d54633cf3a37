"""examples/reproduce_methods_cpu.sh end to end on a tiny synthetic stand-in: every method's recipe at both radii
with the tactics off and on, and the one table pairing each "on" row with its own method's and radius's "off" row."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["data=synthetic", "data.in_shape=[1,12,12]", "data.num_test=64", "trainer.batch_size=64",
        "trainer.epochs=2", "trainer.val_examples=64", "eval.pgd_steps=1", "eval.methods=[IBP]",
        "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'"]


def test_reproduce_methods_script_writes_one_paired_table(tmp_path):
    out = tmp_path / "methods"
    env = {**os.environ, "PY": sys.executable, "SEEDS": "0", "NUM_TRAIN": "128", "OMP_NUM_THREADS": "1"}
    command = ["bash", str(REPO / "examples" / "reproduce_methods_cpu.sh"), str(out), *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = (out / "summary.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| mnist_")]
    assert len(rows) == 16  # 4 recipes x 2 radii x tactics off / on, seed 0
    for recipe in ("mnist_quick", "mnist_sabr", "mnist_ccibp", "mnist_mtlibp"):
        mine = [row for row in rows if row.startswith(f"| {recipe} |")]
        assert len(mine) == 4 and sum("| baseline |" in row for row in mine) == 2
        assert sum("(n=1) |" in row for row in mine) == 2  # each "on" row found its partner
    assert sum("| 0.1 |" in row for row in rows) >= 8 and sum("| 0.3 |" in row for row in rows) >= 8
    sabr_at_01 = [row for row in rows if row.startswith("| mnist_sabr |") and "| 0.4 | 0.4 |" in row]
    assert len(sabr_at_01) == 2  # SABR's lambda for eps 0.1


def test_reproduce_methods_script_names_a_bad_method(tmp_path):
    env = {**os.environ, "PY": sys.executable, "METHODS": "ibp taps"}
    result = subprocess.run(["bash", str(REPO / "examples" / "reproduce_methods_cpu.sh"), str(tmp_path / "x")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "METHODS has 'taps'; allowed: ibp sabr ccibp mtlibp" in result.stderr
