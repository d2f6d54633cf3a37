"""Facts about the config's keys that several places need, each stated once. Plain Python (no torch, no Hydra):
``summarize`` and ``plot`` read run directories with them, and ``conf/`` names directories with them.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

#: Keys that do not change what a run trains or reports: where the data and the run live, how fast and how
#: visibly it runs, when it stops early or checkpoints, the divergence guard. Runs that differ only in these are
#: one setting: they share a run directory name, a resume may change them, and ``summarize`` groups them together.
RUN_ONLY_KEYS = (
    "name", "run_dir", "sweep_name", "objectives", "data.root", "data.download", "trainer.resume", "trainer.device",
    "trainer.workers", "trainer.pin_memory", "trainer.progress", "trainer.stop_after_epochs",
    "trainer.checkpoint_every", "trainer.divergence_factor",
)
#: What a resume may change beyond :data:`RUN_ONLY_KEYS`: more epochs (not fewer than the checkpoint's), the
#: final evaluation (``eval.*``), which reads the trained weights but does not change them, and how many batches
#: the logged clean metrics sample at kappa 0 (``trainer.clean_metric_every``: the same training).
RESUME_MAY_ALSO_CHANGE = ("trainer.epochs", "eval.", "trainer.clean_metric_every")
#: Command-line selectors that name a recipe rather than change a value (their keys are in the run's config).
HYDRA_SELECTORS = ("+experiment", "experiment", "+sweep", "sweep", "hydra.launcher")
#: final.json entries a sweeper may minimise (the ``objectives`` key).
OBJECTIVES = ("clean_error", "pgd_error", "verified_error")


def matches(key: str, rules: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``rules``; a rule ending in ``.`` covers every key under it."""
    return any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule in rules)


def run_dirname_excludes() -> list[str]:
    """Overrides left out of a run directory's name (Hydra's ``override_dirname.exclude_keys``): the seed (its own
    level), the run-only keys, and the selectors."""
    return ["seed", *HYDRA_SELECTORS, *RUN_ONLY_KEYS]


def run_dirname(overrides: str, max_length: int = 120) -> str:
    """A run directory name from Hydra's override_dirname: "default" when empty, and shortened with a
    hash when too long for a file name (the full overrides stay in .hydra/overrides.yaml)."""
    if not overrides:
        return "default"
    if len(overrides) <= max_length:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{overrides[:max_length]}...{digest}"


def default_run_name(data: str, model: str) -> str:
    """The run name when no experiment preset sets one: the root config is the mnist_quick recipe, so its own
    data and model keep that name; any other pair is named after what it trains."""
    return "mnist_quick" if (data, model) == ("mnist", "cnn_4layer") else f"{data}_{model}"
