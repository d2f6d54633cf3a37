"""End to end: the training CLI writes every output, resumes exactly, sweeps and summarises."""
import json
import os
import subprocess
import sys

import pytest
import torch

from support import TINY, run_cli, tiny_cfg

from lirpa_reweight.training import checkpoint
from lirpa_reweight.reports.table import summarize
from lirpa_reweight.training.run import train

def test_cli_run_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(["lirpa_reweight.train", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "final.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for key in ("loss", "clean_error", "verified_error", "eps_base", "mean_weight", "autoeps_mean_offset", "seconds"):
        assert key in metrics[0], key
    final = json.loads((run_dir / "final.json").read_text())
    assert 0.0 <= final["verified_error"] <= 1.0 and 0.0 <= final["clean_error"] <= 1.0
    assert set(final["verified_error_by_method"]) == {"IBP", "CROWN-IBP"}
    # Any-method verification can only be as good as the best single method.
    assert final["verified_error"] <= min(final["verified_error_by_method"].values()) + 1e-9
    state = checkpoint.load(run_dir / "last.pt")
    assert state["epoch"] == 2 and state["autoeps"]["offsets"].shape == (192,)

    # Re-evaluating the saved final weights reproduces the run's own IBP verification.
    report = tmp_path / "eval.json"
    run_cli(["lirpa_reweight.evaluate", f"checkpoint={run_dir / 'last.pt'}", "methods=[IBP]", "pgd_steps=0",
             f"output={report}"], cwd=tmp_path)
    again = json.loads(report.read_text())
    assert again["eps"] == pytest.approx(0.03) and again["num_examples"] == 64
    assert again["verified_error_by_method"]["IBP"] == final["verified_error_by_method"]["IBP"]
    assert again["clean_error"] == final["clean_error"]


@pytest.mark.parametrize("bound", [[], ["bound=crown_ibp", "bound.loss_fusion=true"]], ids=["ibp", "crown_ibp_fused"])
def test_resume_after_interruption_equals_the_uninterrupted_run(tmp_path, bound):
    straight = train(tiny_cfg(tmp_path / "straight", *bound))
    interrupted = train(tiny_cfg(tmp_path / "resumed", "trainer.stop_after_epochs=1", *bound))
    assert interrupted == {"stopped_at_epoch": 1}
    assert not (tmp_path / "resumed" / "final.json").exists()
    resumed = train(tiny_cfg(tmp_path / "resumed", "trainer.resume=true", *bound))

    def without_time(result):
        return {k: v for k, v in result.items() if k != "seconds"}

    assert without_time(resumed) == without_time(straight)
    a, b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["autoeps"]["offsets"], b["autoeps"]["offsets"]) and (a["autoeps"]["offsets"] > 0).any()
    lines = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
              for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("straight", "resumed")]
    assert lines[0] == lines[1]


def test_evaluate_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "bogus.pt"
    checkpoint.save_atomically({"weights": torch.zeros(1)}, bogus)
    result = subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={bogus}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "not a lirpa_reweight checkpoint" in result.stderr


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    train(tiny_cfg(tmp_path, "trainer.stop_after_epochs=1"))
    with pytest.raises(ValueError, match="model.name: 'cnn_4layer' in the checkpoint, 'dm_small' now"):
        train(tiny_cfg(tmp_path, "trainer.resume=true", "model=dm_small"))


def test_two_by_two_multirun_is_summarised(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli(["lirpa_reweight.train", "-m", *TINY, "trainer.epochs=1", "reweight.gamma=0,5", "seed=0,1",
             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=900)
    rows, incomplete = summarize(sweep_dir)
    assert not incomplete
    assert sum(len(row.seeds) for row in rows) == 4
    assert sorted(row.setting.get("reweight.gamma") for row in rows) == ["0", "5"]
    assert all(sorted(row.seeds) == [0, 1] for row in rows)
    result = run_cli(["lirpa_reweight.summarize", str(sweep_dir)], cwd=tmp_path)
    assert "best" in result.stdout and (sweep_dir / "summary.md").is_file() and (sweep_dir / "summary.csv").is_file()


def test_an_expected_failure_ends_in_its_one_line_message(tmp_path):
    """Missing data (here CIFAR-10, which no registry has) is reported in one line, not a chained traceback; the
    run directory claims nothing; HYDRA_FULL_ERROR=1 still shows the trace."""
    args = ["lirpa_reweight.train", "+experiment=cifar_crownibp", f"data.root={tmp_path / 'none'}", "data.download=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: CIFAR-10 data not found") and "cifar-10-python.tar.gz" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "train.log"]  # nothing of a run
    full = run_cli(args, cwd=tmp_path, check=False, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "DataNotFoundError" in full.stderr
