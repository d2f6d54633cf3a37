"""Run directories as ``summarize`` and ``plot`` read them: where they are, what setting and seed each
trained, how far it got. Plain Python and YAML (no torch), so both commands start fast.

A run's setting is its command-line overrides other than the seed and other than keys that do not change what
is trained; a hook group is labelled by what its ``config.yaml`` says ran.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import yaml

from ..training import rundir
from ..training.keys import RUN_ONLY_KEYS

log = logging.getLogger(__name__)

# Hydra's own settings (launcher, sweep and run directories, ...) never change the training either.
HYDRA_PREFIXES = ("hydra.", "hydra/")
# The hook groups and the key that gave each its strength before groups had an ``enabled`` switch (runs written
# then trained with the hook whenever that value was above 0, whatever the group was called).
HOOK_GROUPS = {"reweight": "gamma", "autoeps": "maxoff"}
UNUSED = "unused (off)"
_SEED_DIR = re.compile(r"^seed=(-?\d+)$")


def is_run_dir(path: Path) -> bool:
    return (path / rundir.OVERRIDES).is_file() or (path / rundir.CONFIG).is_file()


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
    """Whether an override sets the run apart (the seed, run-only keys and Hydra's settings do not)."""
    return key != "seed" and key not in RUN_ONLY_KEYS and not key.startswith(HYDRA_PREFIXES)


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
    path = run_dir / rundir.OVERRIDES
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
    config = read_config(run_dir)
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


def read_config(run_dir: Path) -> dict:
    """A run's ``config.yaml`` as a dict ({} when missing or unreadable)."""
    path = Path(run_dir) / rundir.CONFIG
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def last_logged_epoch(run_dir: Path) -> Optional[int]:
    """The last ``epoch`` in ``metrics.jsonl``; None when there is none (or the file cannot be read)."""
    try:
        records = rundir.read_metrics(Path(run_dir) / rundir.METRICS)
    except ValueError as error:
        log.warning("%s", error)
        return None
    return max((int(record["epoch"]) for record in records), default=None)


def read_final(run_dir: Path) -> tuple[Optional[dict], Optional[str]]:
    """A run's ``final.json`` and None, or None and why it cannot be used."""
    path = run_dir / rundir.FINAL
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
