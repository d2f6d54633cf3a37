"""End to end: a run directory tells the truth about refused resumes, crashes, damaged files, divergence, sweeps."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lirpa_reweight.training import checkpoint
from lirpa_reweight.training.divergence import DivergenceError
from lirpa_reweight.training.rundir import RunDirectoryBusy
from lirpa_reweight.training.run import train
from support import TINY, compose_config, lock_holder, tiny_cfg

FAST_EVAL = ["eval.methods=[IBP]", "eval.pgd_steps=0"]


def cli(args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "lirpa_reweight.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in ("train.log", ".lock") and "tensorboard" not in p.parts}


def test_refused_resume_changes_nothing_and_says_why_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    first = cli([*TINY, *FAST_EVAL, "trainer.progress=true", "trainer.stop_after_epochs=1",
                 f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # Not a terminal: no tqdm bars (carriage returns) mixed into the log lines.
    assert "\r" not in first.stderr + first.stdout and "it/s" not in first.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / ".hydra" / "hydra.yaml").is_file()
    assert "trainer.stop_after_epochs=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    before = snapshot(run_dir)

    refused = cli([*TINY, *FAST_EVAL, "trainer.resume=true", "reweight.gamma=1", "autoeps.maxoff=0.3",
                   f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert refused.returncode != 0
    assert "reweight.gamma: 5.0 in the checkpoint, 1 now" in refused.stderr
    assert "autoeps.maxoff: 0.15 in the checkpoint, 0.3 now" in refused.stderr
    assert snapshot(run_dir) == before  # config.yaml, .hydra/, metrics, checkpoints: all as they were
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "error: cannot resume" in refused.stderr
    log_text = (run_dir / "train.log").read_text()  # the run's log says why it ended
    assert "cannot resume from" in log_text and "reweight.gamma: 5.0 in the checkpoint, 1 now" in log_text


def test_a_run_directory_in_use_is_refused_naming_its_holder(tmp_path):
    holder = lock_holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryBusy, match=rf"in use .*pid {holder.pid} on "):
            train(tiny_cfg(tmp_path, "trainer.resume=true"))
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written


def test_resume_reads_a_torn_metrics_file_and_warns_when_records_are_missing(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    train(tiny_cfg(tmp_path, *FAST_EVAL, "trainer.epochs=3", "trainer.stop_after_epochs=1"))
    with metrics.open("a") as file:
        file.write('\n{"epoch": 2, "loss": 0.')  # a blank line and a write cut short by a kill
    train(tiny_cfg(tmp_path, *FAST_EVAL, "trainer.epochs=3", "trainer.stop_after_epochs=2", "trainer.resume=true"))
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]

    metrics.unlink()
    with caplog.at_level(logging.WARNING):
        train(tiny_cfg(tmp_path, *FAST_EVAL, "trainer.epochs=3", "trainer.resume=true"))
    assert f"{metrics} has no record of epoch(s) 1-2" in caplog.text
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [3]


def test_resume_from_a_damaged_last_pt_falls_back_to_the_previous_one(tmp_path, caplog):
    straight = train(tiny_cfg(tmp_path / "straight", *FAST_EVAL))
    run_dir = tmp_path / "damaged"
    train(tiny_cfg(run_dir, *FAST_EVAL, "trainer.stop_after_epochs=2"))
    assert checkpoint.load(run_dir / "last.pt.prev")["epoch"] == 1
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        resumed = train(tiny_cfg(run_dir, *FAST_EVAL, "trainer.resume=true"))
    assert "last.pt is damaged" in caplog.text and "resuming from the previous checkpoint" in caplog.text
    drop = {"seconds"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in straight.items() if k not in drop}
    assert (run_dir / "last.pt.damaged").read_bytes() == data[: len(data) // 3]
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2


def test_a_finished_run_is_extended_by_more_epochs_and_config_checkpoint_agree(tmp_path):
    straight = train(tiny_cfg(tmp_path / "straight", *FAST_EVAL, "trainer.epochs=3"))
    run_dir = tmp_path / "extended"
    train(tiny_cfg(run_dir, *FAST_EVAL))  # 2 epochs, final.json written
    again = train(tiny_cfg(run_dir, *FAST_EVAL, "trainer.resume=true"))  # finished: nothing trained
    assert again == json.loads((run_dir / "final.json").read_text()) and again["epochs"] == 2
    extended = train(tiny_cfg(run_dir, *FAST_EVAL, "trainer.epochs=3", "trainer.resume=true", "eval.pgd_steps=1"))
    assert extended["epochs"] == 3 and json.loads((run_dir / "final.json").read_text())["epochs"] == 3
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # The run recorded is the run trained: the new values in config.yaml and in the checkpoint alike.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved = checkpoint.load(run_dir / "last.pt")
    assert config["trainer"]["epochs"] == saved["config"]["trainer"]["epochs"] == 3
    assert config["eval"]["pgd_steps"] == saved["config"]["eval"]["pgd_steps"] == 1
    reference = checkpoint.load(tmp_path / "straight" / "last.pt")
    for key in reference["model"]:  # 2 + 1 epochs train exactly what 3 epochs do
        assert torch.equal(reference["model"][key], saved["model"][key]), key
    assert extended["verified_error"] == straight["verified_error"]


@pytest.mark.parametrize("optimizer", ["torch.optim.Adam", "torch.optim.SGD"])  # SGD: bounds turn NaN mid-epoch
def test_divergence_stops_with_epoch_step_and_fix_and_saves_nothing_bad(tmp_path, optimizer):
    with pytest.raises(DivergenceError, match=r"diverged at epoch 1, step \d+ .*lower schedule.lr \(now 1e\+06"):
        train(tiny_cfg(tmp_path, *FAST_EVAL, "schedule.lr=1e6", f"optimizer._target_={optimizer}", "trainer.epochs=4"))
    assert not (tmp_path / "final.json").exists() and not (tmp_path / "best.pt").exists()
    for name in ("last.pt", "last.pt.prev"):
        if (tmp_path / name).exists():
            state = checkpoint.load(tmp_path / name)
            assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # the diverged epoch is not recorded


def _compose(*overrides):
    return compose_config(overrides)


def test_runs_are_named_after_what_they_train():
    assert _compose().name == "mnist_quick"
    assert _compose("data=synthetic").name == "synthetic_cnn_4layer"
    assert _compose("model=dm_small").name == "mnist_dm_small"
    assert _compose("+experiment=mnist_ibp").name == "mnist_ibp"


def test_an_interrupted_sweep_resumes_with_the_same_command(tmp_path):
    args = [*TINY, *FAST_EVAL, "trainer.epochs=3", "seed=0,1,2,3", "sweep_name=demo"]
    sweep_dir = tmp_path / "multirun" / "synthetic_cnn_4layer" / "demo"
    sweep = subprocess.Popen([sys.executable, "-m", "lirpa_reweight.train", "-m", *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill the sweep once the third job has a checkpoint
        deadline = time.time() + 300
        while not list(sweep_dir.glob("*/seed=2/last.pt")) and time.time() < deadline and sweep.poll() is None:
            time.sleep(0.02)
        if sweep.poll() is None:
            os.kill(sweep.pid, signal.SIGKILL)
    finally:
        sweep.wait()
    finished = {seed: next(sweep_dir.glob(f"*/seed={seed}")) for seed in (0, 1)}
    assert all((d / "final.json").is_file() for d in finished.values())
    assert not list(sweep_dir.glob("*/seed=2/final.json"))
    stamps = {seed: (d / "last.pt").stat().st_mtime_ns for seed, d in finished.items()}

    result = cli(["-m", *args, "trainer.resume=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {seed: next(sweep_dir.glob(f"*/seed={seed}")) for seed in range(4)}
    assert all((d / "final.json").is_file() for d in runs.values())
    for seed in (0, 1):  # finished jobs are not retrained
        assert (runs[seed] / "last.pt").stat().st_mtime_ns == stamps[seed]
        assert "nothing to train" in (runs[seed] / "train.log").read_text()
    assert "resumed from" in (runs[2] / "train.log").read_text()
    for run in runs.values():
        assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_checkpoint_of_the_earlier_layout_evaluates_but_does_not_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_cfg(run_dir, *FAST_EVAL, "trainer.epochs=1"))
    # What lirpa_reweight 0.1 wrote: no format entry, CROWN-IBP's beta ramp under schedule.
    state = torch.load(run_dir / "last.pt", weights_only=True)
    del state["format"]
    state["config"]["schedule"].update(beta_start=1.0, beta_end=0.0)
    checkpoint.save_atomically(state, run_dir / "last.pt")
    (run_dir / "last.pt.prev").unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    refused = cli([*TINY, *FAST_EVAL, "trainer.epochs=2", "trainer.resume=true", f"hydra.run.dir={run_dir}"],
                  cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert "written by an earlier lirpa_reweight (checkpoint format 1" in line and "lirpa-evaluate" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name not in (".lock",
            "train.log")} == {k: v for k, v in before.items() if k != "train.log"}
    evaluated = subprocess.run([sys.executable, "-m", "lirpa_reweight.evaluate", f"checkpoint={run_dir / 'last.pt'}",
                                "methods=[IBP]", "pgd_steps=0"], cwd=tmp_path, capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["verified_error"] is not None
