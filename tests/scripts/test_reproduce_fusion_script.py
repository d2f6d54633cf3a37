"""examples/reproduce_fusion_cpu.sh end to end on a tiny synthetic stand-in: CROWN-IBP with loss fusion on and off,
the tactics off and on, and the one table pairing each "on" row with its own fusion setting's "off" row."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["data=synthetic", "data.in_shape=[1,12,12]", "data.num_test=64", "trainer.batch_size=64",
        "trainer.epochs=2", "trainer.val_examples=64", "eval.pgd_steps=1", "eval.methods=[IBP]",
        "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'"]


def test_reproduce_fusion_script_writes_one_paired_table(tmp_path):
    out = tmp_path / "fusion"
    env = {**os.environ, "PY": sys.executable, "SEEDS": "0", "NUM_TRAIN": "128", "OMP_NUM_THREADS": "1"}
    command = ["bash", str(REPO / "examples" / "reproduce_fusion_cpu.sh"), str(out), *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| True |")
            or line.startswith("| False |")]
    assert len(rows) == 4  # loss fusion on / off x tactics off / on, seed 0
    for fusion in ("True", "False"):
        mine = [row for row in rows if row.startswith(f"| {fusion} |")]
        assert sum("| baseline |" in row for row in mine) == 1 and sum("(n=1) |" in row for row in mine) == 1


def test_reproduce_fusion_script_names_a_bad_fusion_value(tmp_path):
    env = {**os.environ, "PY": sys.executable, "FUSION": "true maybe"}
    result = subprocess.run(["bash", str(REPO / "examples" / "reproduce_fusion_cpu.sh"), str(tmp_path / "x")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "FUSION has 'maybe'; allowed: true false" in result.stderr
