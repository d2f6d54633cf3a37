"""Run-directory pieces on their own: lock, metrics log, resume rule, checkpoint rotation/corruption, divergence."""
import json
import logging
import os
import time
import traceback

import pytest
import torch

from support import lock_holder

from lirpa_reweight.training import checkpoint, run_state, rundir
from lirpa_reweight.training.divergence import DivergenceError, DivergenceMonitor, require_finite_parameters


# --- lock -----------------------------------------------------------------------------------------------------

def test_second_lock_on_a_run_directory_fails_at_once_naming_the_holder(tmp_path):
    with rundir.RunLock(tmp_path):
        started = time.time()
        with pytest.raises(rundir.RunDirectoryBusy, match=rf"in use .*pid {os.getpid()} on .*started "):
            rundir.RunLock(tmp_path).acquire()
        assert time.time() - started < 1
    with rundir.RunLock(tmp_path):  # released: free again
        pass


def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    holder = lock_holder(tmp_path)
    try:
        with pytest.raises(rundir.RunDirectoryBusy, match=rf"pid {holder.pid} on "):
            rundir.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with rundir.RunLock(tmp_path):  # a killed holder leaves no stale lock
        pass


# --- metrics.jsonl ----------------------------------------------------------------------------------------------

def test_metrics_lines_are_appended_whole_and_read_back(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (1, 2):
        rundir.append_metrics(path, {"epoch": epoch, "loss": 0.5 / epoch})
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.25}\n'
    assert rundir.read_metrics(path) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]


def test_torn_last_line_and_blank_lines_are_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n{"epoch": 3, "lo')
    with caplog.at_level(logging.WARNING):
        assert [r["epoch"] for r in rundir.read_metrics(path)] == [1, 2]
    assert f"{path}:2 is blank" in caplog.text and f"{path}:4 is a torn last line" in caplog.text


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2 is not a metrics record"):
        rundir.read_metrics(path)


def test_keep_metrics_up_to_drops_later_epochs_and_warns_about_missing_ones(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 3}\n{"epoch": 4}\n{"epoch": 5}\n{"epoch": 6, "x')
    with caplog.at_level(logging.WARNING):
        kept = rundir.keep_metrics_up_to(path, 4)
    assert [r["epoch"] for r in kept] == [3, 4] and path.read_text() == '{"epoch": 3}\n{"epoch": 4}\n'
    assert "no record of epoch(s) 1-2" in caplog.text


# --- the resume rule ----------------------------------------------------------------------------------------------

SAVED = {"seed": 0, "name": "a", "run_dir": "/x", "reweight": {"gamma": 5, "alpha": 0.1},
         "autoeps": {"maxoff": 0.15}, "trainer": {"epochs": 6, "resume": False, "device": None, "workers": 0},
         "eval": {"methods": ["IBP"]}}


def _with(**changes):
    config = json.loads(json.dumps(SAVED))
    for key, value in changes.items():
        group, field = key.split("__") if "__" in key else (None, key)
        (config[group] if group else config)[field] = value
    return config


def test_resume_refuses_each_changed_training_key_with_both_values():
    with pytest.raises(run_state.ResumeMismatch) as error:
        run_state.check_resume_config(SAVED, _with(reweight__gamma=1, autoeps__maxoff=0.3), 2, "last.pt")
    message = str(error.value)
    assert "  autoeps.maxoff: 0.15 in the checkpoint, 0.3 now" in message.splitlines()
    assert "  reweight.gamma: 5 in the checkpoint, 1 now" in message.splitlines()
    assert "alpha" not in message


def test_resume_allows_keys_that_do_not_change_what_is_trained():
    run_state.check_resume_config(SAVED, _with(name="b", run_dir="/y", trainer__resume=True, trainer__device="cpu",
                                            trainer__workers=4, eval__methods=["IBP", "CROWN"]), 2, "last.pt")
    run_state.check_resume_config(SAVED, _with(trainer__epochs=10), 6, "last.pt")  # extend a finished run


def test_resume_refuses_fewer_epochs_than_the_checkpoint_and_new_or_missing_keys():
    with pytest.raises(run_state.ResumeMismatch, match="trainer.epochs: 3 now, below the checkpoint's epoch 4"):
        run_state.check_resume_config(SAVED, _with(trainer__epochs=3), 4, "last.pt")
    extra = _with()
    extra["reweight"]["beta"] = 1
    with pytest.raises(run_state.ResumeMismatch, match="reweight.beta: absent in the checkpoint, 1 now"):
        run_state.check_resume_config(SAVED, extra, 2, "last.pt")


# --- checkpoints ------------------------------------------------------------------------------------------------

def _damage(path, kind):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "random": os.urandom(len(data))}[kind])


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_a_damaged_checkpoint_is_named_and_never_advises_unsafe_loading(tmp_path, kind):
    path = tmp_path / "last.pt"
    checkpoint.save_atomically({"epoch": 1, "w": torch.randn(200)}, path)
    _damage(path, kind)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.load(path)
    message = str(error.value)
    assert str(path) in message and "damaged" in message and "weights_only" not in message
    # Nor in what Python prints with it (torch's own message suggests weights_only=False).
    assert "weights_only" not in "".join(traceback.format_exception(error.value))


def test_save_rotating_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_rotating({"epoch": 1}, path)
    assert not checkpoint.previous_path(path).exists()
    checkpoint.save_rotating({"epoch": 2}, path)
    checkpoint.save_rotating({"epoch": 3}, path)
    assert checkpoint.load(path)["epoch"] == 3 and checkpoint.load(tmp_path / "last.pt.prev")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.prev"]  # no temporary left


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "missing"])
def test_load_with_fallback_uses_the_previous_copy_and_says_so(tmp_path, kind, caplog):
    path = tmp_path / "last.pt"
    checkpoint.save_rotating({"epoch": 1}, path)
    checkpoint.save_rotating({"epoch": 2}, path)
    if kind == "missing":
        path.unlink()
    else:
        _damage(path, kind)
    with caplog.at_level(logging.WARNING):
        state, used = checkpoint.load_with_fallback(path)
    assert state["epoch"] == 1 and used == tmp_path / "last.pt.prev"
    assert "resuming from the previous checkpoint" in caplog.text and str(used) in caplog.text


def test_load_with_fallback_names_both_files_when_both_are_damaged(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_rotating({"epoch": 1}, path)
    checkpoint.save_rotating({"epoch": 2}, path)
    _damage(path, "truncated")
    _damage(tmp_path / "last.pt.prev", "empty")
    with pytest.raises(checkpoint.CheckpointError, match=r"last\.pt is damaged.*last\.pt\.prev is damaged"):
        checkpoint.load_with_fallback(path)


# --- divergence -------------------------------------------------------------------------------------------------

def test_monitor_names_the_first_non_finite_step():
    monitor = DivergenceMonitor(factor=None)
    for loss in (2.3, 1.0, float("nan"), float("inf"), 0.5):
        monitor.observe(torch.tensor(loss))
    with pytest.raises(DivergenceError, match="epoch 3, step 3 .*loss nan is not finite"):
        monitor.check(3)
    monitor.start_epoch()
    monitor.observe(torch.tensor(1e30))  # no factor: large but finite is fine
    monitor.check(4)


def test_monitor_stops_a_loss_past_factor_times_the_first_loss_floored_at_one():
    monitor = DivergenceMonitor(factor=100, hint="lower schedule.lr")
    monitor.observe(torch.tensor(0.2))  # reference max(0.2, 1) = 1
    monitor.observe(torch.tensor(99.0))
    monitor.check(1)
    monitor.start_epoch()
    monitor.observe(torch.tensor(50.0))
    monitor.observe(torch.tensor(101.0))
    with pytest.raises(DivergenceError, match=r"epoch 2, step 2 .*101 exceeds 100 x .* 1\b.*lower schedule.lr"):
        monitor.check(2)


def test_monitor_reference_survives_a_resume():
    monitor = DivergenceMonitor(factor=10)
    monitor.observe(torch.tensor(5.0))
    resumed = DivergenceMonitor(factor=10)
    resumed.load_state_dict(monitor.state_dict())
    resumed.observe(torch.tensor(49.0))  # below 10 x 5, though above 10 x its own first loss
    resumed.check(2)
    resumed.observe(torch.tensor(51.0))
    with pytest.raises(DivergenceError):
        resumed.check(2)


def test_non_finite_weights_are_refused():
    model = torch.nn.Linear(2, 2)
    require_finite_parameters(model, "x")
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(DivergenceError, match="parameter 'bias' is not finite"):
        require_finite_parameters(model, "checkpoint last.pt")


def test_a_failing_step_after_non_finite_weights_is_reported_as_divergence():
    monitor = DivergenceMonitor(factor=None, hint="lower schedule.lr")
    model = torch.nn.Linear(2, 2)
    monitor.observe(torch.tensor(1e30))  # finite: not flagged without a factor
    other = ValueError("a bug")
    monitor.check_failure(2, other, model)  # finite weights: the error is not divergence, the caller re-raises it
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=r"epoch 2: .*update of step 1, and step 2 failed \(lb has NaN"):
        monitor.check_failure(2, ValueError("lb has NaN or inf"), model)
