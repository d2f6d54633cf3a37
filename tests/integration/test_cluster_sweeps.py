"""Cluster sweeps and search: the SLURM launcher presets, a submitit sweep, Optuna searches and their summary.

The tests of a launcher or sweeper skip where its plugin (the `launchers` extra) is not installed."""
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from support import compose_config, run_cli

from lirpa_reweight.train import objective_values
from lirpa_reweight.training import build
from lirpa_reweight.reports.optuna import read_optuna_results
from lirpa_reweight.summarize import main as summarize_main
from lirpa_reweight.reports.table import summarize

# As tests/test_train.py's TINY, at radii small enough that verified error differs between settings.
TINY = [
    "data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=192", "data.num_test=256",
    "trainer.batch_size=64", "trainer.val_examples=64", "trainer.progress=false", "trainer.epochs=3",
    "schedule.eps_train=0.004", "schedule.eps_eval=0.001", "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'",
    "eval.methods=[IBP]", "eval.pgd_steps=0",
]
SEARCHED = {"reweight.gamma", "reweight.alpha", "autoeps.maxoff"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace
        return False


needs_submitit = pytest.mark.skipif(
    not (_installed("hydra_plugins.hydra_submitit_launcher") and _installed("submitit")),
    reason="hydra-submitit-launcher is not installed (pip install .[launchers])")
needs_optuna = pytest.mark.skipif(
    not (_installed("hydra_plugins.hydra_optuna_sweeper") and _installed("optuna")),
    reason="hydra-optuna-sweeper is not installed (pip install .[launchers])")


def compose_hydra(overrides):
    return compose_config(overrides, hydra=True)


def finals_by_trial(sweep_dir: Path) -> dict:
    """Trial number -> (overrides as a dict, final.json) for every numbered trial directory."""
    trials = {}
    for trial in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        overrides = dict(o.lstrip("+").split("=", 1) for o in yaml.safe_load((trial / ".hydra/overrides.yaml").read_text()))
        trials[int(trial.name)] = (overrides, json.loads((trial / "final.json").read_text()))
    return trials


# --- SLURM -----------------------------------------------------------------------------------------------------

def sbatch_script(cfg, tmp_path, monkeypatch) -> str:
    """The sbatch file hydra-submitit-launcher would submit for one job of ``cfg``, without a cluster."""
    import submitit

    scripts = []

    def capture(executor, fn, *iterables):
        scripts.append(executor._executor._make_submission_file_text("python -m train", "uid"))
        raise RuntimeError("captured")

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    fake_bin = tmp_path / "bin"  # submitit's SlurmExecutor looks for srun on PATH; nothing is run
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(RuntimeError, match="captured"):
        launcher.launch([["seed=0"]], initial_job_idx=0)
    return scripts[0]


@needs_submitit
def test_slurm_gpu_preset_starts_one_task_per_gpu(tmp_path, monkeypatch):
    cfg = compose_hydra(["+experiment=cifar_crownibp", "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=4",
                              "hydra.launcher.partition=gpu", "hydra.launcher.account=proj42",
                              f"hydra.sweep.dir={tmp_path}", "hydra.job.name=train"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "proj42", 4320)
    script = sbatch_script(cfg, tmp_path, monkeypatch)
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --nodes=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=4320", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj42"):
        assert line in script.splitlines(), line
    # Partition and account are the user's: unset, sbatch gets no such line.
    bare = sbatch_script(compose_hydra(["hydra/launcher=slurm_gpu", f"hydra.sweep.dir={tmp_path}",
                                             "hydra.job.name=train"]), tmp_path, monkeypatch)
    assert "--partition" not in bare and "--account" not in bare and "#SBATCH --ntasks-per-node=1" in bare


@needs_submitit
def test_slurm_cpu_preset_is_one_task_without_gpus(tmp_path, monkeypatch):
    cfg = compose_hydra(["hydra/launcher=slurm_cpu", f"hydra.sweep.dir={tmp_path}", "hydra.job.name=train"])
    script = sbatch_script(cfg, tmp_path, monkeypatch)
    assert "#SBATCH --ntasks-per-node=1" in script.splitlines() and "gpus" not in script


@needs_submitit
def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli(["lirpa_reweight.train", "-m", *TINY, "seed=0,1", "hydra/launcher=submitit_local",
             "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    rows, incomplete = summarize(sweep_dir)
    assert not incomplete and len(rows) == 1 and rows[0].seeds == [0, 1]
    # Each job ran under submitit (its own log and result) and wrote its run's outputs.
    logs = sorted((sweep_dir / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in log.read_text() for log in logs)
    for seed, run_dir in zip((0, 1), rows[0].run_dirs):
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        for name in ("final.json", "last.pt", "metrics.jsonl"):
            assert (run_dir / name).is_file(), (run_dir, name)


# --- Optuna ----------------------------------------------------------------------------------------------------

@needs_optuna
def test_optuna_presets_compose_with_the_recipes_maxoff_range():
    for experiment, eps_train in (("mnist_ibp", 0.4), ("cifar_crownibp", 8.8 / 255)):
        cfg = compose_hydra([f"+experiment={experiment}", "+sweep=optuna_tactics"])
        params = cfg.hydra.sweeper.params
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
        assert params["reweight.gamma"] == "interval(0, 10)"
        low, high = params["autoeps.maxoff"].removeprefix("interval(").removesuffix(")").split(",")
        assert float(low) == 0 and float(high) == pytest.approx(eps_train / 2, rel=1e-12)
        assert list(cfg.objectives) == ["verified_error"] and cfg.reweight.gamma > 0 and cfg.autoeps.maxoff > 0
    pareto = compose_hydra(["+experiment=cifar_crownibp", "+sweep=optuna_pareto"])
    assert list(pareto.objectives) == ["clean_error", "verified_error"]
    assert list(pareto.hydra.sweeper.direction) == ["minimize", "minimize"]
    assert pareto.hydra.sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"


def test_objectives_are_checked_and_returned_as_a_sweeper_needs():
    final = {"clean_error": 0.25, "verified_error": 0.5, "pgd_error": None}
    assert objective_values(["verified_error"], final) == 0.5
    assert objective_values(["clean_error", "verified_error"], final) == [0.25, 0.5]
    assert math.isnan(objective_values(["verified_error"], {"stopped_at_epoch": 1}))  # no final
    assert math.isnan(objective_values(["clean_error", "pgd_error"], final)[1])  # PGD off
    assert build.read_config(compose_config(["run_dir=unused"])).objectives == ("verified_error",)
    for bad in ("[verified]", "[]", "verified_error"):
        with pytest.raises(ValueError, match=r"objectives=.*clean_error.*verified_error"):
            build.read_config(compose_config(["run_dir=unused", f"objectives={bad}"]))


@needs_optuna
def test_optuna_search_names_the_best_trial_and_summarize_reads_it(tmp_path):
    sweep_dir = tmp_path / "search"
    run_cli(["lirpa_reweight.train", "+sweep=optuna_tactics", *TINY, "hydra.sweeper.n_trials=4",
             "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    trials = finals_by_trial(sweep_dir)
    assert sorted(trials) == [0, 1, 2, 3]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == SEARCHED
    verified = {n: final["verified_error"] for n, (_, final) in trials.items()}
    assert len(set(verified.values())) > 1, "the trials should differ, or 'best' tells nothing"
    assert results["best_value"] == min(verified.values())
    best = [n for n, (overrides, _) in trials.items()
            if all(float(overrides[k]) == v for k, v in results["best_params"].items())]
    assert len(best) == 1 and verified[best[0]] == results["best_value"]
    for overrides, _ in trials.values():  # sampled inside the preset's ranges: maxoff up to eps_train / 2
        assert 0 <= float(overrides["reweight.gamma"]) <= 10 and 0 <= float(overrides["reweight.alpha"]) <= 1
        assert 0 <= float(overrides["autoeps.maxoff"]) <= 0.002

    rows, incomplete = summarize(sweep_dir)
    assert not incomplete and len(rows) == 4  # one row per sampled setting
    best_rows = [row for row in rows if str(sweep_dir / str(best[0])) in map(str, row.run_dirs)]
    assert best_rows[0].best and SEARCHED <= set(best_rows[0].setting)
    assert summarize_main([str(sweep_dir)]) == 0
    markdown = (sweep_dir / "summary.md").read_text()
    section = markdown.split("## Optuna search: Best parameters")[1]
    assert f"{100 * results['best_value']:.2f} | {best[0]} |" in section
    assert f"{results['best_params']['reweight.gamma']:.6g}" in section


@needs_optuna
def test_optuna_pareto_search_keeps_exactly_the_non_dominated_trials(tmp_path):
    sweep_dir = tmp_path / "pareto"
    run_cli(["lirpa_reweight.train", "+sweep=optuna_pareto", *TINY, "hydra.sweeper.n_trials=4",
             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    trials = finals_by_trial(sweep_dir)
    points = {n: (final["clean_error"], final["verified_error"]) for n, (_, final) in trials.items()}

    def dominated(p):
        return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points.values())

    front = sorted(points[n] for n in points if not dominated(points[n]))
    solutions = read_optuna_results(sweep_dir)
    assert sorted(tuple(s.values) for s in solutions) == front
    for solution in solutions:
        assert set(solution.params) == SEARCHED
    assert summarize_main([str(sweep_dir)]) == 0
    assert "## Optuna search: Pareto front" in (sweep_dir / "summary.md").read_text()


def write_trial(root: Path, number: int, overrides: list, final=None):
    trial = root / str(number)
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (trial / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "objectives": ["verified_error"]}))
    if final is not None:
        (trial / "final.json").write_text(json.dumps(final))


def test_summarize_groups_optuna_trials_by_their_sampled_parameters(tmp_path, capsys):
    """Trials 0 and 2 sampled the same point for different seeds: one row of two seeds; trial 3 failed."""
    root = tmp_path / "search"
    write_trial(root, 0, ["reweight.gamma=2.5", "autoeps.maxoff=0.1", "seed=0"], {"clean_error": 0.1, "verified_error": 0.3})
    write_trial(root, 1, ["reweight.gamma=7.0", "autoeps.maxoff=0.05", "seed=0"], {"clean_error": 0.2, "verified_error": 0.25})
    write_trial(root, 2, ["reweight.gamma=2.5", "autoeps.maxoff=0.1", "seed=1"], {"clean_error": 0.3, "verified_error": 0.4})
    write_trial(root, 3, ["reweight.gamma=9.0", "autoeps.maxoff=0.0", "seed=0"])
    (root / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"reweight.gamma": 7.0, "autoeps.maxoff": 0.05}, "best_value": 0.25}))
    rows, incomplete = summarize(root)
    by_gamma = {row.setting["reweight.gamma"]: row for row in rows}
    assert set(by_gamma) == {"2.5", "7.0"} and by_gamma["2.5"].seeds == [0, 1]
    assert by_gamma["2.5"].verified_error.mean == pytest.approx(0.35) and by_gamma["7.0"].best
    assert [run.run_dir.name for run in incomplete] == ["3"]
    assert summarize_main([str(root)]) == 0
    section = (root / "summary.md").read_text().split("## Optuna search: Best parameters")[1]
    assert "| 0.05 | 7 | 25.00 | 1 |" in section  # keys as the file lists them (sorted here)

    (root / "optimization_results.yaml").write_text("name: optuna\nbest_value: 0.25\n")
    assert summarize_main([str(root)]) == 2
    assert "optimization_results.yaml" in capsys.readouterr().err
