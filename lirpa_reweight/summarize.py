"""The paper's results table from finished runs: ``python -m lirpa_reweight.summarize DIR [--by-method]``.

Finds every run directory under DIR (a directory with ``.hydra/overrides.yaml`` or ``config.yaml``),
groups the runs by setting (their command-line overrides other than the seed and other than keys that do
not change what is trained; a hook group labelled by what its ``config.yaml`` says ran), and reports clean
and verified error as mean +- sample std (ddof=1) over seeds, in percent, with the best row (lowest mean verified error) marked. The table is printed and written
as ``summary.md`` and ``summary.csv`` in DIR. Runs without ``final.json`` (failed or unfinished) are
listed under the table with the last epoch they logged.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .optuna_results import format_optuna_results, matches, read_optuna_results

# Overrides that do not change what is trained: runs differing only in these are seeds of one setting.
NON_TRAINING_KEYS = ("seed", "run_dir", "sweep_name", "trainer.resume", "trainer.device", "trainer.workers",
                     "trainer.pin_memory", "trainer.progress", "trainer.stop_after_epochs", "trainer.checkpoint_every",
                     "trainer.divergence_factor", "data.root", "objectives")
# Hydra's own settings (launcher, sweep and run directories, ...) never change the training either.
NON_TRAINING_PREFIXES = ("hydra.", "hydra/")
# Column order for --by-method; methods outside this list follow in the order found.
METHOD_ORDER = ("IBP", "CROWN-IBP", "CROWN", "alpha-CROWN")
# The hook groups and the key that gave each its strength before groups had an ``enabled`` switch (runs written
# then trained with the hook whenever that value was above 0, whatever the group was called).
HOOK_GROUPS = {"reweight": "gamma", "autoeps": "maxoff"}
UNUSED = "unused (off)"
_SEED_DIR = re.compile(r"^seed=(-?\d+)$")


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof=1) of fractions over ``n`` seeds; ``std`` is None when n < 2."""

    mean: float
    std: Optional[float]
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Optional["Stat"]:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class Row:
    """One setting of the table: its overrides and its errors over seeds (fractions in [0, 1])."""

    setting: dict[str, str]
    seeds: list[Optional[int]]
    run_dirs: list[Path]
    eps: list[float]
    clean_error: Stat
    verified_error: Stat
    pgd_error: Optional[Stat]
    verified_error_by_method: dict[str, Optional[Stat]]
    incomplete_runs: int = 0
    best: bool = False
    verified_by_seed: dict = field(default_factory=dict)  # seed -> verified error, for paired comparisons


@dataclass
class IncompleteRun:
    """A run without a usable ``final.json``: how far it got and why it is not in the table."""

    run_dir: Path
    setting: dict[str, str]
    seed: Optional[int]
    last_epoch: Optional[int]
    planned_epochs: Optional[int]
    reason: str

    def progress(self) -> str:
        if self.last_epoch is None:
            return "no metrics"
        of = f" of {self.planned_epochs}" if self.planned_epochs is not None else ""
        return f"last epoch {self.last_epoch}{of} in metrics.jsonl"


@dataclass
class _Run:
    run_dir: Path
    setting: dict[str, str]
    seed: Optional[int]
    final: Optional[dict] = None
    problem: Optional[str] = None


# --- finding and reading runs ---------------------------------------------------------------------------------

def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "config.yaml").is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (``root`` itself included), sorted; hidden folders are not searched."""
    if is_run_dir(root):
        return [root]
    found = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except PermissionError:
        return found
    for child in children:
        found.extend(find_run_dirs(child))
    return found


def is_training_key(key: str) -> bool:
    return key not in NON_TRAINING_KEYS and not key.startswith(NON_TRAINING_PREFIXES)


def parse_override(override: str) -> tuple[str, str]:
    """``'+experiment=mnist_ibp'`` -> ``('experiment', 'mnist_ibp')``; a deletion ``'~key'`` -> ``('key', '~')``."""
    override = override.strip()
    if override.startswith("~"):
        key, _, value = override[1:].partition("=")
        return key, "~" + value
    key, sep, value = override.lstrip("+").partition("=")
    if not sep:
        raise ValueError(f"cannot read override {override!r}: expected key=value")
    return key, value


def _read_overrides(run_dir: Path) -> Optional[list[str]]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    overrides = yaml.safe_load(path.read_text()) or []
    if not isinstance(overrides, list):
        raise ValueError(f"{path}: expected a list of overrides, got {type(overrides).__name__}")
    return [str(item) for item in overrides]


def _seed_from_path(run_dir: Path) -> Optional[int]:
    match = _SEED_DIR.match(run_dir.name)
    return int(match.group(1)) if match else None


def run_setting(run_dir: Path, root: Optional[Path] = None) -> tuple[dict[str, str], Optional[int]]:
    """A run's setting (the overrides that change the training, in command-line order) and its seed.

    Without ``.hydra/overrides.yaml`` the setting is the run's path relative to ``root`` (its ``seed=N``
    level removed), and the seed comes from ``config.yaml`` or the directory name.
    """
    run_dir = Path(run_dir)
    overrides = _read_overrides(run_dir)
    seed = _seed_from_path(run_dir)
    config = _read_config(run_dir)
    if isinstance(config.get("seed"), int):
        seed = config["seed"]
    if overrides is None:
        where = run_dir.parent if _SEED_DIR.match(run_dir.name) else run_dir
        try:
            label = str(where.relative_to(root)) if root is not None else where.name
        except ValueError:  # root is the run itself, below its seed level
            label = where.name
        return {"run": label if label != "." else where.name}, seed
    setting = {}
    for override in overrides:
        key, value = parse_override(override)
        if key == "seed":
            seed = int(value) if re.fullmatch(r"-?\d+", value) else seed
        if is_training_key(key):
            setting[key] = value
    return what_ran(setting, config), seed


def hook_enabled(config: dict, group: str) -> Optional[bool]:
    """Whether a run's config trained with the ``group`` hook: its ``enabled`` switch, or for a run from before
    the switch existed, whether its strength (gamma, maxoff) was above 0; None when the config does not say."""
    section = config.get(group)
    if not isinstance(section, dict):
        return None
    if isinstance(section.get("enabled"), bool):
        return section["enabled"]
    strength = section.get(HOOK_GROUPS[group])
    return strength > 0 if isinstance(strength, (int, float)) and not isinstance(strength, bool) else None


def what_ran(setting: dict[str, str], config: dict) -> dict[str, str]:
    """``setting`` relabelled by what the run's ``config.yaml`` says ran: a hook group reads ``on``/``off`` as
    trained (``reweight.enabled=...`` folds into it), and a switched-off group's other keys read "unused (off)"."""
    labelled = dict(setting)
    for group in HOOK_GROUPS:
        enabled = hook_enabled(config, group)
        if enabled is None:
            continue
        switch = f"{group}.enabled"
        if group in labelled or switch in labelled:
            labelled = {(group if key == switch else key): value for key, value in labelled.items()
                        if not (key == switch and group in labelled)}
            labelled[group] = "on" if enabled else "off"
        if not enabled:
            for key in labelled:
                if key.startswith(group + "."):
                    labelled[key] = UNUSED
    return labelled


def setting_label(setting: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "(defaults)"


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def last_logged_epoch(run_dir: Path) -> Optional[int]:
    """The last ``epoch`` in ``metrics.jsonl``, skipping a torn last line; None when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            last = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return last


def _read_final(run_dir: Path) -> tuple[Optional[dict], Optional[str]]:
    path = run_dir / "final.json"
    if not path.is_file():
        return None, "no final.json (failed or unfinished)"
    try:
        final = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"final.json unreadable ({error})"
    missing = [k for k in ("clean_error", "verified_error") if not isinstance(final.get(k), (int, float))]
    if missing:
        return None, f"final.json lacks {', '.join(missing)}"
    return final, None


# --- the table ---------------------------------------------------------------------------------------------------

def summarize(root) -> tuple[list[Row], list[IncompleteRun]]:
    """Rows (one per setting, best marked) and the incomplete runs under ``root``.

    Raises FileNotFoundError / NotADirectoryError for a missing ``root`` and ValueError when it holds no run.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise ValueError(f"no training runs under {root}: expected run directories holding .hydra/overrides.yaml "
                         "or config.yaml (written by lirpa_reweight.train)")
    groups: dict[tuple, list[_Run]] = {}
    incomplete = []
    for run_dir in run_dirs:
        setting, seed = run_setting(run_dir, root)
        final, problem = _read_final(run_dir)
        run = _Run(run_dir, setting, seed, final, problem)
        groups.setdefault(tuple(sorted(setting.items())), []).append(run)
        if final is None:
            planned = _read_config(run_dir).get("trainer", {}).get("epochs")
            incomplete.append(IncompleteRun(run_dir, setting, seed, last_logged_epoch(run_dir),
                                            planned if isinstance(planned, int) else None, problem))
    rows = [row for row in (_row(runs) for runs in groups.values()) if row is not None]
    columns = _columns(rows)
    rows.sort(key=lambda row: _setting_sort_key(row.setting, columns))
    incomplete_columns = _columns(incomplete)
    incomplete.sort(key=lambda run: (_setting_sort_key(run.setting, incomplete_columns), _natural(str(run.seed))))
    if rows:
        best = min(row.verified_error.mean for row in rows)
        for row in rows:
            row.best = math.isclose(row.verified_error.mean, best, rel_tol=0, abs_tol=1e-12)
    return rows, incomplete


def _row(runs: list[_Run]) -> Optional[Row]:
    done = [run for run in runs if run.final is not None]
    if not done:
        return None
    done.sort(key=lambda run: (run.seed is None, run.seed if run.seed is not None else 0, str(run.run_dir)))
    finals = [run.final for run in done]
    methods = _ordered_methods(finals)
    by_method = {m: Stat.of([f["verified_error_by_method"][m] for f in finals
                             if isinstance(f.get("verified_error_by_method", {}).get(m), (int, float))])
                 for m in methods}
    pgd = [f["pgd_error"] for f in finals if isinstance(f.get("pgd_error"), (int, float))]
    return Row(setting=dict(done[0].setting), seeds=[run.seed for run in done], run_dirs=[run.run_dir for run in done],
               eps=sorted({float(f["eps"]) for f in finals if isinstance(f.get("eps"), (int, float))}),
               clean_error=Stat.of([f["clean_error"] for f in finals]),
               verified_error=Stat.of([f["verified_error"] for f in finals]),
               pgd_error=Stat.of(pgd) if len(pgd) == len(finals) else None,
               verified_error_by_method=by_method, incomplete_runs=len(runs) - len(done),
               verified_by_seed={run.seed: run.final["verified_error"] for run in done if run.seed is not None})


def paired_differences(rows: list[Row], baseline: dict[str, str]) -> list[Optional[Stat]]:
    """Per row, verified error minus the baseline row's for the same seed, over the seeds both have.

    A seed fixes the initial weights and the batch order, so same-seed differences isolate the
    setting's effect from seed noise, which is often larger than the effect. None for the baseline
    row itself and for rows that share no seed with it.
    """
    matches = [row for row in rows if all(row.setting.get(k) == v for k, v in baseline.items())]
    if len(matches) != 1:
        found = "no row" if not matches else f"{len(matches)} rows"
        raise ValueError(f"--paired-to {setting_label(baseline)} matches {found}; it must name exactly one row")
    reference = matches[0].verified_by_seed
    return [None if row is matches[0] else
            Stat.of([row.verified_by_seed[s] - reference[s] for s in row.verified_by_seed if s in reference])
            for row in rows]


def _ordered_methods(finals: list[dict]) -> list[str]:
    found = []
    for final in finals:
        for method in final.get("verified_error_by_method") or {}:
            if method not in found:
                found.append(method)
    return [m for m in METHOD_ORDER if m in found] + [m for m in found if m not in METHOD_ORDER]


def _columns(rows: list[Row]) -> list[str]:
    columns = []
    for row in rows:
        columns.extend(key for key in row.setting if key not in columns)
    return columns


def _natural(value: Optional[str]) -> tuple:
    if value is None:
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def _setting_sort_key(setting: dict[str, str], columns: list[str]) -> tuple:
    return tuple(_natural(setting.get(column)) for column in columns)


# --- formatting ----------------------------------------------------------------------------------------------------

def _percent(stat: Optional[Stat], total: Optional[int] = None) -> str:
    if stat is None:
        return "skipped"
    std = "n/a" if stat.std is None else f"{100 * stat.std:.2f}"
    text = f"{100 * stat.mean:.2f} ± {std}"
    if total is not None and stat.n != total:
        text += f" ({stat.n} of {total} seeds)"
    return text


def _signed_points(stat: Optional[Stat]) -> str:
    if stat is None:
        return "no common seed"
    std = "n/a" if stat.std is None else f"{100 * stat.std:.2f}"
    return f"{100 * stat.mean:+.2f} ± {std} (n={stat.n})"


def _split_columns(rows: list[Row]) -> tuple[list[str], dict[str, str]]:
    """Columns that vary between rows, and the settings common to every row (shown once above the table)."""
    columns = _columns(rows)
    if len(rows) < 2:
        return columns, {}
    common = {}
    for column in columns:
        values = {row.setting.get(column) for row in rows}
        if len(values) == 1 and None not in values:
            common[column] = values.pop()
    return [c for c in columns if c not in common], common


def _eps_text(row: Row) -> str:
    return ", ".join(f"{eps:g}" for eps in row.eps) or "?"


def format_markdown(root: Path, rows: list[Row], incomplete: list[IncompleteRun], by_method: bool = False,
                    paired: Optional[list[Optional[Stat]]] = None) -> str:
    columns, common = _split_columns(rows)
    methods = _ordered_methods([{"verified_error_by_method": row.verified_error_by_method} for row in rows]) \
        if by_method else []
    eps_values = {_eps_text(row) for row in rows}
    eps_column = len(eps_values) > 1
    lines = [f"# Summary of {root}", ""]
    if rows:
        eps_note = "" if eps_column else f" at eps {eps_values.pop()} (eps_eval of final.json)"
        lines.append(f"Test errors in %{eps_note}: mean ± sample std (ddof=1) over seeds. "
                     "Verified: certified by any evaluated bound method. Best row (lowest mean verified error) "
                     "marked **best**.")
        if common:
            lines += ["", "Common to every row: " + setting_label(common)]
        header = (columns or ["setting"]) + (["eps"] if eps_column else []) + ["clean error (%)",
                                                                                "verified error (%)"]
        header += [f"{m} verified error (%)" for m in methods]
        header += ["verified vs baseline, same seed (points)"] if paired is not None else []
        header += ["seeds", "best"]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for index, row in enumerate(rows):
            cells = [row.setting.get(c, "") for c in columns] if columns else [setting_label(row.setting)]
            cells += [_eps_text(row)] if eps_column else []
            verified = _percent(row.verified_error)
            cells += [_percent(row.clean_error), f"**{verified}**" if row.best else verified]
            cells += [_percent(row.verified_error_by_method.get(m), row.clean_error.n) for m in methods]
            if paired is not None:
                difference = paired[index]
                cells.append("baseline" if difference is None and row.verified_by_seed else
                             _signed_points(difference))
            cells += [str(row.clean_error.n), "**best**" if row.best else ""]
            lines.append("| " + " | ".join(cells) + " |")
        if any(row.clean_error.n == 1 for row in rows):
            lines += ["", "std n/a: that row has a single seed, so no spread can be estimated."]
    else:
        lines.append("No finished run: no table.")
    if incomplete:
        lines += ["", f"Incomplete runs (no usable final.json), not in the table ({len(incomplete)}):", ""]
        for run in incomplete:
            seed = f" seed={run.seed}" if run.seed is not None else ""
            lines.append(f"- {setting_label(run.setting)}{seed}: {run.progress()}; {run.reason} ({run.run_dir})")
    duplicates = [row for row in rows if len(set(row.seeds)) < len(row.seeds)]
    for row in duplicates:
        lines += ["", f"Note: {setting_label(row.setting)} has a seed more than once (seeds {row.seeds}): "
                      "probably the same sweep run twice under this directory; each run counts separately."]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row]) -> None:
    """The table with numbers in separate columns (percent; empty std for a single seed)."""
    columns = _columns(rows)
    methods = _ordered_methods([{"verified_error_by_method": row.verified_error_by_method} for row in rows])

    def numbers(stat: Optional[Stat], name: str) -> dict:
        mean = "" if stat is None else round(100 * stat.mean, 6)
        std = "" if stat is None or stat.std is None else round(100 * stat.std, 6)
        return {f"{name}_mean_pct": mean, f"{name}_std_pct": std}

    header = columns + ["eps", "clean_error_mean_pct", "clean_error_std_pct", "verified_error_mean_pct",
                        "verified_error_std_pct", "pgd_error_mean_pct", "pgd_error_std_pct"]
    for m in methods:
        header += [f"{m}_verified_error_mean_pct", f"{m}_verified_error_std_pct"]
    header += ["seeds", "seed_list", "incomplete_runs", "best"]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        for row in rows:
            record = {c: row.setting.get(c, "") for c in columns}
            record["eps"] = ";".join(f"{e:g}" for e in row.eps)
            record.update(numbers(row.clean_error, "clean_error"))
            record.update(numbers(row.verified_error, "verified_error"))
            record.update(numbers(row.pgd_error, "pgd_error"))
            for m in methods:
                record.update(numbers(row.verified_error_by_method.get(m), f"{m}_verified_error"))
            record.update(seeds=row.clean_error.n, seed_list=";".join(str(s) for s in row.seeds),
                          incomplete_runs=row.incomplete_runs, best=int(row.best))
            writer.writerow(record)


def optuna_section(root: Path, rows: list[Row]) -> str:
    """The best parameters (or Pareto front) of an Optuna sweep in ``root``, with the runs that trained them;
    empty for any other directory."""
    solutions = read_optuna_results(root)
    if solutions is None:
        return ""
    labels = [[str(run_dir.relative_to(root)) if run_dir != root else "." for row in rows
               if matches(row.setting, solution.params) for run_dir in row.run_dirs] for solution in solutions]
    objectives = _read_config(rows[0].run_dirs[0]).get("objectives") if rows else None
    if not (isinstance(objectives, list) and all(isinstance(name, str) for name in objectives)):
        objectives = None
    return format_optuna_results(solutions, objectives, labels)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lirpa_reweight.summarize", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a multirun (or outputs) directory, or one run directory")
    parser.add_argument("--by-method", action="store_true",
                        help="add a verified-error column per bound method (IBP, CROWN-IBP, CROWN, alpha-CROWN)")
    parser.add_argument("--paired-to", default=None, metavar="SETTING",
                        help="baseline row, e.g. 'reweight=off autoeps=off': add each row's same-seed difference "
                             "in verified error to it (mean ± std over the seeds both have)")
    parser.add_argument("--output-prefix", type=Path, default=None,
                        help="write PREFIX.md and PREFIX.csv instead of DIR/summary.md and DIR/summary.csv")
    args = parser.parse_args(argv)
    try:
        rows, incomplete = summarize(args.dir)
        optuna = optuna_section(args.dir, rows)
        paired = None
        if args.paired_to is not None:
            paired = paired_differences(rows, dict(parse_override(item) for item in args.paired_to.split()))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = format_markdown(args.dir, rows, incomplete, by_method=args.by_method, paired=paired) + optuna
    prefix = args.output_prefix if args.output_prefix is not None else args.dir / "summary"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    md_path.write_text(text)
    write_csv(csv_path, rows)
    print(text, end="")
    print(f"\nwritten: {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
