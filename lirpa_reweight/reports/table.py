"""The results table: runs grouped by setting, clean and verified error over seeds, as markdown and CSV.

Statistics are mean +- sample std (ddof=1) over seeds, in percent in the output; the best row (lowest mean
verified error) is marked. Runs without a usable ``final.json`` are kept apart as :class:`IncompleteRun`.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..core.bound_methods import BOUND_METHODS
from .optuna import format_optuna_results, matches, read_optuna_results
from .runs import find_run_dirs, last_logged_epoch, read_config, read_final, run_setting, setting_label



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
    # The cascade's (#21): errors with AutoAttack and alpha-beta-CROWN's counterexamples, and the unknown fraction;
    # None where a run's final.json predates them.
    attack_error: Optional[Stat] = None
    robust_error_lower_bound: Optional[Stat] = None
    unknown: Optional[Stat] = None
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


# --- grouping and statistics ---------------------------------------------------------------------------------------

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
        final, problem = read_final(run_dir)
        run = _Run(run_dir, setting, seed, final, problem)
        groups.setdefault(tuple(sorted(setting.items())), []).append(run)
        if final is None:
            planned = read_config(run_dir).get("trainer", {}).get("epochs")
            incomplete.append(IncompleteRun(run_dir, setting, seed, last_logged_epoch(run_dir),
                                            planned if isinstance(planned, int) else None, problem))
    rows = [row for row in (_row(runs) for runs in groups.values()) if row is not None]
    columns = _columns(rows)
    rows.sort(key=lambda row: _setting_sort_key(row.setting, columns))
    incomplete_columns = _columns(incomplete)
    incomplete.sort(key=lambda run: (_setting_sort_key(run.setting, incomplete_columns), _natural(str(run.seed))))
    for radius in {tuple(row.eps) for row in rows}:  # best per eval radius: errors at different eps do not compare
        same_eps = [row for row in rows if tuple(row.eps) == radius]
        best = min(row.verified_error.mean for row in same_eps)
        for row in same_eps:
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
    cascade = {key: [f[key] for f in finals if isinstance(f.get(key), (int, float))]
               for key in ("attack_error", "robust_error_lower_bound")}
    unknown = [f["unknown"] / f["num_examples"] for f in finals
               if isinstance(f.get("unknown"), int) and isinstance(f.get("num_examples"), int) and f["num_examples"]]
    return Row(setting=dict(done[0].setting), seeds=[run.seed for run in done], run_dirs=[run.run_dir for run in done],
               eps=sorted({float(f["eps"]) for f in finals if isinstance(f.get("eps"), (int, float))}),
               clean_error=Stat.of([f["clean_error"] for f in finals]),
               verified_error=Stat.of([f["verified_error"] for f in finals]),
               pgd_error=Stat.of(pgd) if len(pgd) == len(finals) else None,
               verified_error_by_method=by_method, incomplete_runs=len(runs) - len(done),
               verified_by_seed={run.seed: run.final["verified_error"] for run in done if run.seed is not None},
               **{key: Stat.of(values) if len(values) == len(finals) else None for key, values in cascade.items()},
               unknown=Stat.of(unknown) if len(unknown) == len(finals) else None)


def paired_differences(rows: list[Row], baseline: dict[str, str]) -> list[Union[Stat, str, None]]:
    """Per row, verified error minus its baseline row's for the same seed, over the seeds both have.

    A seed fixes the initial weights and the batch order, so same-seed differences isolate the
    setting's effect from seed noise, which is often larger than the effect. With one row matching
    ``baseline`` every row is paired with it; with several (e.g. one per method and eps), each row is paired
    with the one that agrees with it on every other setting (keys of the baseline's groups, such as
    ``autoeps.maxoff`` for ``autoeps=off``, aside). None for baseline rows; for a row that cannot be paired,
    the reason (the table's cell).
    """
    matches = [row for row in rows if all(row.setting.get(k) == v for k, v in baseline.items())]
    if not matches:
        raise ValueError(f"--paired-to {setting_label(baseline)} matches no row; it must name at least one row")

    def others(row: Row) -> dict[str, str]:
        return {k: v for k, v in row.setting.items()
                if not any(k == group or k.startswith(group + ".") for group in baseline)}

    differences = []
    for row in rows:
        if any(row is match for match in matches):
            differences.append(None)
            continue
        partners = matches if len(matches) == 1 else [m for m in matches if others(m) == others(row)]
        if len(partners) != 1:
            differences.append("no baseline row with the same other settings")
            continue
        reference = partners[0].verified_by_seed
        difference = Stat.of([row.verified_by_seed[s] - reference[s] for s in row.verified_by_seed if s in reference])
        differences.append(difference if difference is not None else "no common seed")
    return differences


def _ordered_methods(finals: list[dict]) -> list[str]:
    found = []
    for final in finals:
        for method in final.get("verified_error_by_method") or {}:
            if method not in found:
                found.append(method)
    # the bound methods' own order; methods outside it follow in the order found
    return [m for m in BOUND_METHODS if m in found] + [m for m in found if m not in BOUND_METHODS]


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
                    paired: Optional[list[Union[Stat, str, None]]] = None) -> str:
    columns, common = _split_columns(rows)
    methods = _ordered_methods([{"verified_error_by_method": row.verified_error_by_method} for row in rows]) \
        if by_method else []
    eps_values = {_eps_text(row) for row in rows}
    eps_column = len(eps_values) > 1
    pgd_column = any(row.pgd_error is not None for row in rows)
    extra = _cascade_columns(rows)
    lines = [f"# Summary of {root}", ""]
    if rows:
        eps_note = "" if eps_column else f" at eps {eps_values.pop()} (eps_eval of final.json)"
        lines.append(f"Test errors in %{eps_note}: mean ± sample std (ddof=1) over seeds. "
                     "Verified: certified by a stage of the evaluation's cascade (docs/verification.md). Best row (lowest mean verified error"
                     f"{', per eps' if eps_column else ''}) marked **best**." + (
                         " PGD: wrong on the clean input or after the PGD attack (a lower bound on the robust "
                         "error, as verified is an upper bound)." if pgd_column else ""))
        if common:
            lines += ["", "Common to every row: " + setting_label(common)]
        header = (columns or ["setting"]) + (["eps"] if eps_column else []) + ["clean error (%)"]
        header += ["PGD error (%)"] if pgd_column else []
        header += [name for name, _ in extra]
        header += ["verified error (%)"]
        header += [f"{m} verified error (%)" for m in methods]
        header += ["verified vs baseline, same seed (points)"] if paired is not None else []
        header += ["seeds", "best"]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for index, row in enumerate(rows):
            cells = [row.setting.get(c, "") for c in columns] if columns else [setting_label(row.setting)]
            cells += [_eps_text(row)] if eps_column else []
            verified = _percent(row.verified_error)
            cells += [_percent(row.clean_error)]
            cells += [_percent(row.pgd_error) if row.pgd_error is not None else "n/a"] if pgd_column else []
            cells += [_percent(getattr(row, key)) if getattr(row, key) is not None else "n/a" for _, key in extra]
            cells += [f"**{verified}**" if row.best else verified]
            cells += [_percent(row.verified_error_by_method.get(m), row.clean_error.n) for m in methods]
            if paired is not None:
                difference = paired[index]
                cells.append("baseline" if difference is None else
                             difference if isinstance(difference, str) else _signed_points(difference))
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


def _cascade_columns(rows: list[Row]) -> list[tuple[str, str]]:
    """(header, Row attribute) of the cascade's columns worth showing: an attack error beyond PGD's, the
    falsified fraction with alpha-beta-CROWN's counterexamples, the unknowns; none for runs before #21."""
    def differs(key, reference):
        return any(getattr(r, key) is not None and (getattr(r, reference) is None
                                                    or getattr(r, key).mean != getattr(r, reference).mean)
                   for r in rows)

    columns = [("attack error, +AutoAttack (%)", "attack_error")] if differs("attack_error", "pgd_error") else []
    columns += [("falsified, +alpha-beta-CROWN (%)", "robust_error_lower_bound")] \
        if differs("robust_error_lower_bound", "attack_error") else []
    columns += [("unknown (%)", "unknown")] if any(r.unknown is not None and r.unknown.mean > 0 for r in rows) else []
    return columns


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
    objectives = read_config(rows[0].run_dirs[0]).get("objectives") if rows else None
    if not (isinstance(objectives, list) and all(isinstance(name, str) for name in objectives)):
        objectives = None
    return format_optuna_results(solutions, objectives, labels)
