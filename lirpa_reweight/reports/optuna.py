"""What an Optuna search found: ``optimization_results.yaml`` of a Hydra Optuna sweep, for ``summarize``.

hydra-optuna-sweeper writes it in the sweep directory after the last trial: ``best_params`` and ``best_value``
for one objective, or ``solutions`` (the Pareto front: ``params`` and ``values`` per solution) for several.
The trials themselves are ordinary run directories (``<sweep dir>/<trial number>/``) whose
``.hydra/overrides.yaml`` holds the sampled parameters, so ``summarize`` groups them like any sweep.
Reads files only: no torch, no Hydra.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

RESULTS_FILE = "optimization_results.yaml"


@dataclass
class Solution:
    """One best trial: its sampled parameters and its objective values (one per objective)."""

    params: dict[str, object]
    values: list[float]


def read_optuna_results(sweep_dir) -> Optional[list[Solution]]:
    """The best trial (one objective) or the Pareto front (several) of the Optuna sweep in ``sweep_dir``;
    None when there is no ``optimization_results.yaml`` (not an Optuna sweep, or one still running).

    Raises ValueError, naming the file, when it exists but is not what hydra-optuna-sweeper writes.
    """
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not readable YAML ({error})") from None
    if isinstance(results, dict) and isinstance(results.get("best_params"), dict) and "best_value" in results:
        return [Solution(dict(results["best_params"]), [float(results["best_value"])])]
    if isinstance(results, dict) and isinstance(results.get("solutions"), list) and all(
            isinstance(s, dict) and isinstance(s.get("params"), dict) and isinstance(s.get("values"), list)
            for s in results["solutions"]):
        return [Solution(dict(s["params"]), [float(v) for v in s["values"]]) for s in results["solutions"]]
    raise ValueError(f"{path}: expected best_params and best_value, or a list of solutions with params and values "
                     "(as hydra-optuna-sweeper writes)")


def matches(setting: dict[str, str], params: dict[str, object]) -> bool:
    """Whether a run's setting (override strings) holds exactly these sampled parameters."""
    for key, value in params.items():
        text = setting.get(key)
        if text is None:
            return False
        try:
            if not math.isclose(float(text), float(value), rel_tol=1e-12, abs_tol=0.0):
                return False
        except (TypeError, ValueError):
            if text != str(value):
                return False
    return True


def format_optuna_results(solutions: list[Solution], objectives: Optional[list[str]] = None,
                          run_labels: Optional[list[list[str]]] = None) -> str:
    """A markdown section: the best parameters (one objective) or the Pareto front (several), each with the
    run directories that trained it (``run_labels[i]`` for ``solutions[i]``)."""
    several = len(solutions) != 1 or len(solutions[0].values) != 1
    title = "Pareto front" if several else "Best parameters"
    lines = ["", f"## Optuna search: {title} ({RESULTS_FILE})", ""]
    width = max((len(solution.values) for solution in solutions), default=0)
    if objectives is not None and len(objectives) != width:
        objectives = None
    names = [f"{name.replace('_', ' ')} (%)" for name in objectives] if objectives is not None else \
        [f"objective {i}" for i in range(width)]
    keys = []
    for solution in solutions:
        keys.extend(key for key in solution.params if key not in keys)
    header = keys + list(names) + ["runs"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, solution in enumerate(solutions):
        cells = [_number(solution.params.get(key, "")) for key in keys]
        cells += [f"{100 * v:.2f}" if objectives is not None else f"{v:.6g}" for v in solution.values]
        labels = run_labels[index] if run_labels is not None else []
        cells.append(", ".join(labels) or "not found under this directory")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
