"""plot: each figure is written as a PNG from hand-made run files and from a tiny real run; non-runs fail clearly."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lirpa_reweight  # noqa: F401  (patches auto_LiRPA before it is imported)
from auto_LiRPA.eps_scheduler import FixedScheduler, LinearScheduler
from lirpa_reweight.training import checkpoint
from lirpa_reweight.core.autoeps import AutoEpsScheduler
from lirpa_reweight.plot import main
from lirpa_reweight.reports.figures import (final_training_eps, group_by_setting, legend_labels, margins_at_eps_eval, read_metrics, time_curve)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, f"{path} is not a non-empty PNG"


def write_overrides(run_dir: Path, overrides):
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def test_training_plot_from_metrics(tmp_path):
    run_dir = tmp_path / "run"
    write_overrides(run_dir, ["autoeps.maxoff=0.1", "seed=0"])
    records = [{"epoch": e, "clean_error": 0.5 / e, "verified_error": 0.9 / e, "val_clean_error": 0.6 / e,
                "val_verified_error": 0.95 / e, "eps_base": min(0.1 * e, 0.3), "autoeps_mean_offset": 0.01 * e,
                "autoeps_max_offset": 0.05, "beta": None} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 4, "cl')
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]  # the torn line of epoch 4 is skipped
    assert main(["training", str(run_dir)]) == 0
    assert_png(run_dir / "training.png")


def test_eps_histogram_values_from_a_real_autoeps_state(tmp_path):
    autoeps = AutoEpsScheduler(FixedScheduler(0.3), num_examples=6, maxoff=0.4, device="cpu")
    autoeps.update(torch.arange(6), torch.tensor([-0.5, 0.2, -1.0, -0.1, 0.0, -0.9]))
    run_dir = tmp_path / "run"
    # Only the first data.num_train examples are trained on; the others' offsets never move.
    checkpoint.save_atomically({"epoch": 3, "autoeps": autoeps.state_dict(), "config": {"data": {"num_train": 4}}},
                               run_dir / "last.pt")
    eps, eps_base, maxoff = final_training_eps(run_dir)
    # offsets -margin * 0.4 = 0.2, 0, 0.4, 0.04; eps = max(0.3 - offset, 0)
    np.testing.assert_allclose(eps, [0.1, 0.3, 0.0, 0.26], atol=1e-6)
    assert (eps_base, maxoff) == (pytest.approx(0.3), pytest.approx(0.4))
    assert main(["eps", str(run_dir), "--output", str(tmp_path / "figs" / "eps.png")]) == 0
    assert_png(tmp_path / "figs" / "eps.png")


def test_eps_histogram_with_auto_eps_off_and_mid_ramp(tmp_path):
    base = LinearScheduler(0.4, "start=1,length=4")
    base.set_epoch_length(2)
    autoeps = AutoEpsScheduler(base, num_examples=5, maxoff=0.0, device="cpu")
    autoeps.step_epoch()
    autoeps.step_epoch()
    autoeps.step_batch()
    autoeps.step_batch()  # epoch 2, batch 2: eps_base = 0.1 + 0.05
    checkpoint.save_atomically({"autoeps": autoeps.state_dict()}, tmp_path / "last.pt")
    eps, eps_base, _ = final_training_eps(tmp_path)
    assert eps_base == pytest.approx(0.15)
    np.testing.assert_allclose(eps, [0.15] * 5)
    assert main(["eps", str(tmp_path)]) == 0
    assert_png(tmp_path / "eps.png")


def test_legend_labels_name_only_what_differs(tmp_path):
    dirs = []
    for gamma, seed in [(0, 0), (5, 0), (5, 1)]:
        run_dir = tmp_path / f"g{gamma}" / f"seed={seed}"
        write_overrides(run_dir, ["+experiment=mnist_ibp", f"reweight.gamma={gamma}", f"seed={seed}"])
        dirs.append(run_dir)
    labels, shared = legend_labels(dirs)
    assert labels == ["reweight.gamma=0 seed=0", "reweight.gamma=5 seed=0", "reweight.gamma=5 seed=1"]
    assert shared == "experiment=mnist_ibp"


@pytest.mark.parametrize("kind,expected", [("training", "metrics.jsonl"), ("eps", "last.pt"),
                                           ("margins", "best.pt or last.pt")])
def test_not_a_run_is_a_clear_error(tmp_path, capsys, kind, expected):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main([kind, str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert str(tmp_path) in err and expected in err
    assert not (tmp_path / f"{kind}.png").exists()
    assert main([kind, str(tmp_path / "missing")]) != 0
    assert "is not a directory" in capsys.readouterr().err


def test_one_run_only_for_training_and_eps(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["training", str(tmp_path), str(tmp_path)])
    assert exit_info.value.code != 0


def write_time_run(run_dir: Path, overrides, seconds, verified):
    write_overrides(run_dir, overrides)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"trainer": {"val_examples": 40}}))
    records = [{"epoch": e, "seconds": s, "val_verified_error": v}
               for e, (s, v) in enumerate(zip(seconds, verified), start=1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_time_plot_sums_seconds_and_groups_seeds_by_setting(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        write_time_run(sweep / "quick" / f"seed={seed}", ["+experiment=mnist_quick", f"seed={seed}"],
                       [10.0, 12.5, 11.0], [0.9, 0.5 + 0.1 * seed, 0.3])
        write_time_run(sweep / "fast" / f"seed={seed}", ["+experiment=mnist_fast_quick", f"seed={seed}"],
                       [20.0, 20.0], [0.6, 0.2])
    seconds, verified = time_curve(sweep / "quick" / "seed=1")
    np.testing.assert_allclose(seconds, [10.0, 22.5, 33.5])  # cumulative
    np.testing.assert_allclose(verified, [90.0, 60.0, 30.0])  # percent
    groups = group_by_setting([sweep / "quick" / "seed=0", sweep / "fast" / "seed=0", sweep / "quick" / "seed=1",
                               sweep / "fast" / "seed=1"])
    assert [(label, [d.name for d in dirs]) for label, dirs in groups] == [
        ("experiment=mnist_quick", ["seed=0", "seed=1"]), ("experiment=mnist_fast_quick", ["seed=0", "seed=1"])]
    # A sweep directory stands for its runs; without torch: the time plot reads JSON only.
    out = subprocess.run([sys.executable, "-c", "import sys; from lirpa_reweight.plot import main; "
                          f"code = main(['time', {str(sweep)!r}, '--label', 'fast', '--label', 'quick', "
                          f"'--output', {str(tmp_path / 'time.png')!r}]); "
                          "print(code, sorted(m for m in ('torch', 'auto_LiRPA') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split("\n")[-2] == "0 []", out.stdout + out.stderr[-2000:]
    assert_png(tmp_path / "time.png")


def test_time_plot_refuses_a_gap_and_a_wrong_label_count(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_time_run(run_dir, ["seed=0"], [1.0, 2.0, 3.0], [0.5, 0.4, 0.3])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert main(["time", str(run_dir), "--label", "a", "--label", "b"]) == 2
    assert "--label given 2 times, but the runs form 1 settings" in capsys.readouterr().err
    (run_dir / "metrics.jsonl").write_text(lines[0] + "\n" + lines[2] + "\n")  # epoch 2 missing
    assert main(["time", str(run_dir)]) == 2
    assert "holds epochs [1, 3]" in capsys.readouterr().err
    assert not (run_dir / "time.png").exists()
    assert main(["time", str(tmp_path / "run" / ".hydra")]) == 2  # no run below it
    with pytest.raises(SystemExit):
        main(["training", str(run_dir), "--label", "x"])


# --- from a tiny real run --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Three epochs of IBP training on the synthetic set at a fixed eps 0.01, with both hooks on."""
    run_dir = tmp_path_factory.mktemp("real") / "run"
    overrides = ["data=synthetic", "trainer.epochs=3", "trainer.val_examples=64", "eval.methods=[IBP]",
                 "eval.pgd_steps=0", "trainer.progress=false", "trainer.device=cpu", "schedule.eps_train=0.01",
                 "schedule.eps_eval=0.01", "schedule.eps_scheduler._target_=auto_LiRPA.eps_scheduler.FixedScheduler",
                 "autoeps=on", "autoeps.maxoff=0.01", "reweight=on", "reweight.gamma=5", f"run_dir={run_dir}",
                 f"hydra.run.dir={run_dir}"]
    done = subprocess.run([sys.executable, "-m", "lirpa_reweight.train", *overrides], capture_output=True, text=True,
                          cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_margins_from_a_real_run_agree_with_its_final_evaluation(real_run, tmp_path):
    final = json.loads((real_run / "final.json").read_text())
    margins, eps, method = margins_at_eps_eval(real_run, num_test=final["num_examples"], device="cpu")
    assert (eps, method, len(margins)) == (0.01, "IBP", final["num_examples"])
    assert ((margins >= -1) & (margins <= 1)).all()
    # eq. 6 margin > 0 exactly when every margin bound is positive: the verified fraction of final.json.
    assert (margins > 0).mean() == pytest.approx(1 - final["verified_error_by_method"]["IBP"])
    output = tmp_path / "margins.png"
    assert main(["margins", str(real_run), str(real_run), "--num-test", "64", "--device", "cpu",
                 "--output", str(output)]) == 0
    assert_png(output)


def test_margins_default_output_and_crown_ibp(real_run):
    assert main(["margins", str(real_run), "--num-test", "32", "--method", "CROWN-IBP", "--device", "cpu"]) == 0
    assert_png(real_run / "margins.png")


def test_training_and_eps_from_a_real_run(real_run):
    assert main(["training", str(real_run)]) == 0
    assert_png(real_run / "training.png")
    eps, eps_base, maxoff = final_training_eps(real_run)
    assert eps_base == pytest.approx(0.01) and maxoff == pytest.approx(0.01)
    assert len(eps) == 512 and ((eps >= eps_base - maxoff - 1e-9) & (eps <= eps_base + 1e-9)).all()
    assert main(["eps", str(real_run)]) == 0
    assert_png(real_run / "eps.png")
