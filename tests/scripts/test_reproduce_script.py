"""examples/reproduce_mnist_cpu.sh end to end on a tiny synthetic stand-in: 4 settings x 5 seeds, table, figure."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=128", "data.num_test=64",
        "trainer.batch_size=64", "trainer.val_examples=64", "trainer.epochs=1", "eval.pgd_steps=1",
        "eval.methods=[IBP]", "schedule.eps_train=0.05", "schedule.eps_eval=0.03"]


def test_reproduce_script_writes_the_paired_table_and_the_margin_figure(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(["bash", str(REPO / "examples" / "reproduce_mnist_cpu.sh"), str(sweep), *TINY],
                            env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "summary.md").read_text()
    assert table.count("| 5 |") == 4  # four settings, five seeds each
    assert "baseline" in table and table.count("(n=5)") == 3
    assert (sweep / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
