"""summarize: the table from hand-made run directories, checked against hand-computed means and sample stds."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lirpa_reweight.reports.runs import last_logged_epoch, parse_override
from lirpa_reweight.reports.table import summarize
from lirpa_reweight.summarize import main

COMMON = ["+experiment=mnist_ibp", "trainer.device=cpu"]


def make_run(root: Path, relative: str, overrides=None, final=None, epochs_logged=0, planned_epochs=6,
             config_seed=None, torn_line=False) -> Path:
    """A run directory as lirpa_reweight.train and Hydra leave it (only the files summarize reads)."""
    run_dir = root / relative
    run_dir.mkdir(parents=True)
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        # Hydra's own copy of the config must not be taken for a run of its own.
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if config_seed is not None or overrides is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": config_seed or 0,
                                                             "trainer": {"epochs": planned_epochs}}))
    if epochs_logged:
        lines = [json.dumps({"epoch": e, "loss": 1.0 / e}) for e in range(1, epochs_logged + 1)]
        text = "\n".join(lines) + "\n" + ('{"epoch": 9, "lo' if torn_line else "")
        (run_dir / "metrics.jsonl").write_text(text)
    if final is not None:
        (run_dir / "final.json").write_text(json.dumps(final))
    return run_dir


def final_json(clean, verified, by_method=None, eps=0.3, pgd=None):
    return {"eps": eps, "num_examples": 10000, "clean_error": clean, "pgd_error": pgd if pgd is not None else clean,
            "verified_error": verified, "verified_error_by_method": by_method or {"IBP": verified},
            "skipped": {}, "seconds": 1.0, "epochs": 6, "best_epoch": 6}


@pytest.fixture
def sweep(tmp_path):
    """A gamma sweep: gamma=1 x 3 seeds, gamma=5 x 2 finished + 1 unfinished, gamma=10 x 1 finished + 1 failed."""
    root = tmp_path / "multirun" / "mnist_ibp"
    stamp = "2026-01-01_00-00-00"

    def run(gamma, seed, final=None, extra=(), **kwargs):
        overrides = COMMON + [f"reweight.gamma={gamma}", *extra, f"seed={seed}"]
        return make_run(root, f"{stamp}/reweight.gamma={gamma}/seed={seed}", overrides, final, **kwargs)

    run(1, 0, final_json(0.10, 0.30, {"IBP": 0.31, "CROWN-IBP": 0.30, "CROWN": 0.30}), epochs_logged=6)
    run(1, 1, final_json(0.12, 0.34, {"IBP": 0.35, "CROWN-IBP": 0.34, "CROWN": 0.34}), epochs_logged=6)
    # Keys that do not change the training must not split this seed into a setting of its own.
    run(1, 2, final_json(0.14, 0.29, {"IBP": 0.30, "CROWN-IBP": 0.29, "CROWN": None}),
        extra=["trainer.resume=true", "trainer.workers=4", "hydra.launcher.n_jobs=2", "data.root=/data"],
        epochs_logged=6)
    run(5, 0, final_json(0.11, 0.25, {"IBP": 0.26, "CROWN-IBP": 0.25, "CROWN": None}), epochs_logged=6)
    run(5, 1, final_json(0.13, 0.27, {"IBP": 0.28, "CROWN-IBP": 0.27, "CROWN": None}), epochs_logged=6)
    run(5, 2, epochs_logged=3, torn_line=True)  # interrupted during epoch 4
    run(10, 0, final_json(0.20, 0.40, {"IBP": 0.40, "CROWN-IBP": 0.41, "CROWN": None}), epochs_logged=6)
    run(10, 1)  # failed before its first epoch
    return root


def test_rows_hold_hand_computed_mean_and_sample_std(sweep):
    rows, incomplete = summarize(sweep)
    # Natural order of the values (1, 5, 10), not string order (1, 10, 5).
    assert [row.setting for row in rows] == [{"experiment": "mnist_ibp", "reweight.gamma": g} for g in ("1", "5", "10")]
    gamma1, gamma5, gamma10 = rows
    assert gamma1.seeds == [0, 1, 2] and gamma5.seeds == [0, 1] and gamma10.seeds == [0]
    # gamma=1 clean 10, 12, 14 -> mean 12, std sqrt((4 + 0 + 4) / 2) = 2; verified 30, 34, 29 -> 31, sqrt(14 / 2)
    assert gamma1.clean_error.mean == pytest.approx(0.12) and gamma1.clean_error.std == pytest.approx(0.02)
    assert gamma1.verified_error.mean == pytest.approx(0.31)
    assert gamma1.verified_error.std == pytest.approx(7 ** 0.5 / 100)
    # gamma=5: 11, 13 and 25, 27 -> std sqrt(2) (ddof=1; ddof=0 would give 1)
    assert gamma5.clean_error.std == pytest.approx(2 ** 0.5 / 100)
    assert gamma5.verified_error.mean == pytest.approx(0.26) and gamma5.verified_error.n == 2
    assert gamma10.verified_error.std is None and gamma10.verified_error.n == 1
    # CROWN skipped in gamma=1 seed 2: the mean covers the two seeds that have it; skipped everywhere: None.
    assert gamma1.verified_error_by_method["CROWN"].mean == pytest.approx(0.32)
    assert gamma1.verified_error_by_method["CROWN"].n == 2
    assert gamma5.verified_error_by_method["CROWN"] is None
    assert [row.best for row in rows] == [False, True, False]
    assert [row.incomplete_runs for row in rows] == [0, 1, 1]
    assert {(run.setting["reweight.gamma"], run.seed, run.last_epoch, run.planned_epochs) for run in incomplete} == {
        ("5", 2, 3, 6), ("10", 1, None, 6)}


def test_markdown_table_and_csv_are_written(sweep, capsys):
    assert main([str(sweep), "--by-method"]) == 0
    printed = capsys.readouterr().out
    markdown = (sweep / "summary.md").read_text()
    assert markdown in printed
    lines = markdown.splitlines()
    assert "Common to every row: experiment=mnist_ibp" in lines
    assert "at eps 0.3" in markdown
    header = "| reweight.gamma | clean error (%) | PGD error (%) | verified error (%) | IBP verified error (%) | " \
             "CROWN-IBP verified error (%) | CROWN verified error (%) | seeds | best |"
    assert header in lines
    assert ("| 1 | 12.00 ± 2.00 | 12.00 ± 2.00 | 31.00 ± 2.65 | 32.00 ± 2.65 | 31.00 ± 2.65 | 32.00 ± 2.83 (2 of 3 seeds) | 3 |  |"
            in lines)
    assert "| 5 | 12.00 ± 1.41 | 12.00 ± 1.41 | **26.00 ± 1.41** | 27.00 ± 1.41 | 26.00 ± 1.41 | skipped | 2 | **best** |" in lines
    assert "| 10 | 20.00 ± n/a | 20.00 ± n/a | 40.00 ± n/a | 40.00 ± n/a | 41.00 ± n/a | skipped | 1 |  |" in lines
    assert any(line.startswith("std n/a: ") for line in lines)
    unfinished = [line for line in lines if line.startswith("- ")]
    assert len(unfinished) == 2
    assert any("reweight.gamma=5 seed=2: last epoch 3 of 6 in metrics.jsonl" in line for line in unfinished)
    assert any("reweight.gamma=10 seed=1: no metrics" in line for line in unfinished)

    with (sweep / "summary.csv").open() as file:
        records = list(csv.DictReader(file))
    assert [r["reweight.gamma"] for r in records] == ["1", "5", "10"]
    assert [r["experiment"] for r in records] == ["mnist_ibp"] * 3  # the CSV keeps every setting column
    assert float(records[1]["verified_error_mean_pct"]) == pytest.approx(26.0)
    assert float(records[1]["verified_error_std_pct"]) == pytest.approx(2 ** 0.5)
    assert records[2]["verified_error_std_pct"] == ""
    assert records[1]["CROWN_verified_error_mean_pct"] == ""
    assert [r["best"] for r in records] == ["0", "1", "0"]
    assert [r["seed_list"] for r in records] == ["0;1;2", "0;1", "0"]
    assert [r["incomplete_runs"] for r in records] == ["0", "1", "1"]


def test_without_by_method_only_the_combined_columns(sweep, tmp_path, capsys):
    prefix = tmp_path / "tables" / "gamma"
    assert main([str(sweep), "--output-prefix", str(prefix)]) == 0
    markdown = (tmp_path / "tables" / "gamma.md").read_text()
    assert (tmp_path / "tables" / "gamma.csv").is_file() and not (sweep / "summary.md").exists()
    assert "| reweight.gamma | clean error (%) | PGD error (%) | verified error (%) | seeds | best |" in markdown.splitlines()


def test_run_dirs_without_hydra_are_grouped_by_path(tmp_path):
    root = tmp_path / "outputs"
    for name, seed, verified in [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.2)]:
        make_run(root, f"{name}/seed={seed}", final=final_json(0.1, verified), config_seed=seed)
    rows, incomplete = summarize(root)
    assert [(row.setting, row.seeds) for row in rows] == [({"run": "a"}, [0, 1]), ({"run": "b"}, [0])]
    # 50, 70 -> mean 60, std sqrt((100 + 100) / 1) = 14.14
    assert rows[0].verified_error.mean == pytest.approx(0.6)
    assert rows[0].verified_error.std == pytest.approx(0.1 * 2 ** 0.5)
    assert [row.best for row in rows] == [False, True] and incomplete == []


def test_one_run_dir_is_a_table_of_one_row(tmp_path):
    run_dir = make_run(tmp_path, "run", ["reweight.gamma=5", "seed=3"], final_json(0.2, 0.5), epochs_logged=6)
    rows, _ = summarize(run_dir)
    assert len(rows) == 1 and rows[0].seeds == [3] and rows[0].best
    assert rows[0].setting == {"reweight.gamma": "5"}


def test_unusable_final_json_is_listed_not_dropped(tmp_path):
    make_run(tmp_path, "x=1/seed=0", ["x=1", "seed=0"], final_json(0.1, 0.2), epochs_logged=2)
    broken = make_run(tmp_path, "x=2/seed=0", ["x=2", "seed=0"], epochs_logged=2)
    (broken / "final.json").write_text('{"clean_error": 0.1')
    rows, incomplete = summarize(tmp_path)
    assert [row.setting for row in rows] == [{"x": "1"}]
    assert len(incomplete) == 1 and "final.json unreadable" in incomplete[0].reason
    assert incomplete[0].last_epoch == 2


def test_only_unfinished_runs_give_no_table_but_list_them(tmp_path, capsys):
    make_run(tmp_path, "x=1/seed=0", ["x=1", "seed=0"], epochs_logged=2)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No finished run" in out and "x=1 seed=0: last epoch 2 of 6" in out


def test_helpers():
    assert parse_override("+experiment=mnist_ibp") == ("experiment", "mnist_ibp")
    assert parse_override("++a.b=[1,2]") == ("a.b", "[1,2]")
    assert parse_override("~reweight") == ("reweight", "~")
    with pytest.raises(ValueError, match="'nonsense'"):
        parse_override("nonsense")


def test_torn_metrics_line_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, "r", ["seed=0"], epochs_logged=4, torn_line=True)
    assert last_logged_epoch(run_dir) == 4
    assert last_logged_epoch(tmp_path) is None


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "not_runs"])
def test_bad_dir_is_a_clear_error(tmp_path, kind, capsys):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("x")
    elif kind == "not_runs":
        (target / "some" / "folder").mkdir(parents=True)
        (target / "some" / "notes.txt").write_text("x")
    with pytest.raises((ValueError, OSError), match=str(target)):
        summarize(target)
    assert main([str(target)]) != 0
    assert str(target) in capsys.readouterr().err


def test_command_line(sweep, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lirpa_reweight.summarize", str(sweep)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| 5 | 12.00 ± 1.41 | 12.00 ± 1.41 | **26.00 ± 1.41** | 2 | **best** |" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run([sys.executable, "-m", "lirpa_reweight.summarize", str(empty)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert failed.returncode != 0 and f"no training runs under {empty}" in failed.stderr


def test_paired_differences_take_the_same_seed_of_the_baseline(tmp_path):
    """Same-seed differences: setting B minus baseline A per seed, over the seeds both finished."""
    root = tmp_path / "tactics"
    a = {0: 0.2329, 1: 0.1905, 2: 0.2157}
    b = {0: 0.2176, 1: 0.1745, 3: 0.5}  # seed 2 missing, seed 3 has no baseline partner
    for seed, verified in a.items():
        make_run(root, f"reweight=off/seed={seed}", ["reweight=off", f"seed={seed}"], final_json(0.1, verified))
    for seed, verified in b.items():
        make_run(root, f"reweight=on/seed={seed}", ["reweight=on", f"seed={seed}"], final_json(0.1, verified))
    assert main([str(root), "--paired-to", "reweight=off"]) == 0
    text = (root / "summary.md").read_text()
    # Seeds 0 and 1: -1.53 and -1.60 points -> mean -1.565 (prints -1.57), sample std 0.0495 (prints 0.05).
    assert "| -1.57 ± 0.05 (n=2) | 3 |" in text
    assert "| off |" in text and "baseline" in text
    assert main([str(root), "--paired-to", "reweight=maybe"]) == 2


def test_paired_differences_pair_within_each_method_and_eps(tmp_path):
    """Several baseline rows (one per recipe and eps): each row is paired with the baseline that agrees with it on
    everything but the tactics, even where a switched-off group's key reads "unused (off)"; best is per eps."""
    root = tmp_path / "methods"
    verified = {  # (recipe, eps) -> (tactics off by seed, both on by seed)
        ("mnist_quick", 0.3): ({0: 0.20, 1: 0.22}, {0: 0.19, 1: 0.20}),   # -1, -2 -> -1.50 ± 0.71
        ("mnist_sabr", 0.3): ({0: 0.30, 1: 0.31}, {0: 0.32, 1: 0.31}),    # +2, 0 -> +1.00 ± 1.41
        ("mnist_quick", 0.1): ({0: 0.05, 1: 0.06}, {0: 0.05, 1: 0.07}),   # 0, +1 -> +0.50 ± 0.71
        ("mnist_sabr", 0.1): ({0: 0.04, 1: 0.04}, {0: 0.03, 1: 0.06}),    # -1, +2 -> +0.50 ± 2.12
    }
    for (recipe, eps), by_tactics in verified.items():
        at_eps = ["schedule.eps_eval=0.1", "autoeps.maxoff=0.075"] if eps == 0.1 else []
        for on, by_seed in zip((False, True), by_tactics):
            tactics = ["reweight=on", "autoeps=on"] if on else ["reweight=off", "autoeps=off"]
            for seed, value in by_seed.items():
                run_dir = make_run(root, f"{recipe}/{','.join(tactics + at_eps)}/seed={seed}",
                                   [f"+experiment={recipe}", *tactics, *at_eps, f"seed={seed}"],
                                   final_json(0.01, value, eps=eps, pgd=0.02))
                (run_dir / "config.yaml").write_text(yaml.safe_dump(
                    {"seed": seed, "reweight": {"enabled": on}, "autoeps": {"enabled": on, "maxoff": 0.15}}))
    # A recipe run only with the tactics on has no baseline to pair with.
    make_run(root, "mnist_mtlibp/on/seed=0", ["+experiment=mnist_mtlibp", "reweight=on", "autoeps=on", "seed=0"],
             final_json(0.01, 0.5, pgd=0.02))
    assert main([str(root), "--paired-to", "reweight=off autoeps=off"]) == 0
    lines = (root / "summary.md").read_text().splitlines()

    def row(recipe, tactics, eps):
        found = [line for line in lines if line.startswith(f"| {recipe} | {tactics} | {tactics} |")
                 and f"| {eps} |" in line]
        assert len(found) == 1, (recipe, tactics, eps, lines)
        return found[0]

    assert "| -1.50 ± 0.71 (n=2) |" in row("mnist_quick", "on", "0.3")
    assert "| +1.00 ± 1.41 (n=2) |" in row("mnist_sabr", "on", "0.3")
    assert "| +0.50 ± 0.71 (n=2) |" in row("mnist_quick", "on", "0.1")
    assert "| +0.50 ± 2.12 (n=2) |" in row("mnist_sabr", "on", "0.1")
    assert "| baseline |" in row("mnist_sabr", "off", "0.1")
    assert "| no baseline row with the same other settings |" in row("mnist_mtlibp", "on", "0.3")
    assert "| 1.00 ± 0.00 | 2.00 ± 0.00 |" in row("mnist_quick", "off", "0.3")  # clean, then PGD
    best = [line for line in lines if line.endswith("| **best** |")]
    assert len(best) == 2  # one per eps: 19.50 at 0.3, 4.00 at 0.1
    assert best[0] == row("mnist_quick", "on", "0.3") and best[1] == row("mnist_sabr", "off", "0.1")


def test_the_cascades_attack_error_falsified_and_unknown_columns(tmp_path):
    from lirpa_reweight.reports.table import format_markdown

    root = tmp_path / "outputs"
    for seed, (attack, lower, unknown) in enumerate([(0.22, 0.23, 20), (0.24, 0.25, 40)]):
        final = dict(final_json(0.1, 0.26, pgd=0.21), attack_error=attack, robust_error_lower_bound=lower,
                     unknown=unknown)
        make_run(root, f"a/seed={seed}", final=final, config_seed=seed)
    make_run(root, "b/seed=0", final=final_json(0.1, 0.3), config_seed=0)  # before the cascade: n/a
    rows, _ = summarize(root)
    assert rows[0].attack_error.mean == pytest.approx(0.23) and rows[0].unknown.mean == pytest.approx(0.003)
    assert rows[1].attack_error is None
    text = format_markdown(root, rows, [])
    assert "attack error, +AutoAttack (%)" in text and "falsified, +alpha-beta-CROWN (%)" in text
    assert "| 23.00 ± 1.41 | 24.00 ± 1.41 | 0.30 ± 0.14 |" in text and "| n/a | n/a | n/a |" in text
