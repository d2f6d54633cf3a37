"""A run's state across processes: what a checkpoint holds, what a resume may change, and claiming the directory.

:class:`RunState` gathers the objects whose state a checkpoint saves (weights, optimizer, schedulers, hooks, the
divergence guard) with the run's config and data description; :class:`Progress` is where the run stands (the last
finished epoch, the best validation epoch). A resume continues only the same training: :func:`check_resume_config`
refuses any other value of a training-relevant key, and a checkpoint of another format is refused in one line.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import ExpectedFailure
from . import checkpoint, rundir
from .divergence import require_finite_parameters
from .keys import RESUME_MAY_ALSO_CHANGE, RUN_ONLY_KEYS, matches

log = logging.getLogger(__name__)

#: The checkpoint layout this version writes and resumes. 2 (lirpa_reweight 0.2): CROWN-IBP's beta ramp under
#: ``bound``, a ``format`` entry. Checkpoints without the entry (0.1) still evaluate, but do not resume.
CHECKPOINT_FORMAT = 2


class ResumeMismatch(ExpectedFailure, ValueError):
    """A resume asks for training-relevant values other than those the checkpoint was trained with."""


@dataclass
class Progress:
    """Where a run stands: the last finished epoch (0 before the first) and the best validation epoch so far."""

    epoch: int = 0
    best: dict = field(default_factory=lambda: {"epoch": None, "val_verified_error": math.inf})


@dataclass
class RunState:
    """The objects a checkpoint saves and restores, and what the run is (its config, its data)."""

    classifier: Any
    optimizer: Any
    lr_scheduler: Any
    criterion: Any
    autoeps: Any
    monitor: Any
    data_info: dict
    config: dict

    def save(self, path: Path, progress: Progress, rotate: bool = False) -> None:
        """Write the state at ``progress`` to ``path`` atomically (keeping the previous file as ``path.prev``
        when ``rotate``); non-finite weights are refused, never saved."""
        require_finite_parameters(self.classifier.model, f"checkpoint {path} of epoch {progress.epoch}")
        save = checkpoint.save_rotating if rotate else checkpoint.save_atomically
        save({
            "format": CHECKPOINT_FORMAT,
            "epoch": progress.epoch,
            "model": self.classifier.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "autoeps": self.autoeps.state_dict(),
            "rng": checkpoint.rng_state(),
            "best": progress.best,
            "divergence": self.monitor.state_dict(),
            "data_info": self.data_info,
            "config": self.config,
        }, path)

    def restore(self, saved: dict, path: Path) -> Progress:
        """Load a checkpoint's state into the objects (and the random generators); return its progress."""
        if saved["data_info"] != self.data_info:
            raise ResumeMismatch(f"cannot resume from {path}: its data shape/normalisation {saved['data_info']} "
                                 f"differ from this run's {self.data_info}")
        self.classifier.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        self.criterion.load_state_dict(saved["criterion"])
        self.autoeps.load_state_dict(saved["autoeps"])
        self.monitor.load_state_dict(saved.get("divergence", {}))
        checkpoint.set_rng_state(saved["rng"])
        return Progress(saved["epoch"], saved["best"])


def find_resume_checkpoint(run_dir: Path, resume: bool, config: dict, device) -> Optional[tuple[dict, Path]]:
    """The checkpoint to continue from (last.pt, or last.pt.prev when last.pt is damaged) and its path, checked
    against this run's ``config``; None for a fresh start."""
    last_path = run_dir / rundir.LAST
    if not (last_path.exists() or checkpoint.previous_path(last_path).exists()):
        if resume:
            log.warning("trainer.resume=true but %s does not exist: starting from scratch", last_path)
        return None
    if not resume:
        log.warning("%s holds a previous run: starting from scratch and overwriting it "
                    "(trainer.resume=true continues it instead)", run_dir)
        return None
    saved, path = checkpoint.load_with_fallback(last_path, map_location=device)
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ResumeMismatch(f"cannot resume from {path}: it was written by an earlier lirpa_reweight (checkpoint "
                             f"format {saved.get('format', 1)}, this version resumes format {CHECKPOINT_FORMAT}); "
                             f"train in a new run_dir, or evaluate it with lirpa-evaluate checkpoint={path}")
    check_resume_config(saved["config"], config, saved["epoch"], path)
    return saved, path


def claim_run_directory(run_dir: Path, config: dict, hydra_files: dict, resumed_from: Optional[tuple[dict, Path]],
                        world_size: int) -> None:
    """The checks passed: record this run's config, and leave only the files it stands behind."""
    from omegaconf import OmegaConf

    saved = dict(config, world_size=world_size)  # how many ranks trained it (the numbers are the same otherwise)
    rundir.write_text_atomically(run_dir / rundir.CONFIG, OmegaConf.to_yaml(OmegaConf.create(saved)))
    for name, text in hydra_files.items():
        rundir.write_text_atomically(run_dir / name, text)
    last_path, metrics_path = run_dir / rundir.LAST, run_dir / rundir.METRICS
    if resumed_from is None:
        rundir.write_text_atomically(metrics_path, "")
        for stale in (rundir.LAST, rundir.LAST + ".prev", rundir.BEST, rundir.FINAL):  # a previous run's files
            (run_dir / stale).unlink(missing_ok=True)                                   # must not pass for this one's
        for stale in run_dir.glob(rundir.FINAL_EXAMPLES.replace(".jsonl", "*.jsonl")):
            stale.unlink()
        return
    saved, path = resumed_from
    if path != last_path:  # last.pt was damaged: keep it aside, the good copy becomes last.pt
        last_path.replace(run_dir / (rundir.LAST + ".damaged"))
        checkpoint.copy_atomically(path, last_path)
    # Drop metric lines of epochs after the checkpoint (an interrupted epoch's partial record).
    rundir.keep_metrics_up_to(metrics_path, saved["epoch"])
    (run_dir / rundir.FINAL).unlink(missing_ok=True)  # trainer.epochs grew: the old one no longer describes the run


# --- what a resume may change ------------------------------------------------------------------------------------

def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


_ABSENT = object()


def config_differences(saved: dict, current: dict,
                       allowed: Iterable[str] = RUN_ONLY_KEYS + RESUME_MAY_ALSO_CHANGE) -> list[str]:
    """``key: saved -> current`` for every leaf key (dotted) whose value differs and that is not ``allowed``."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if matches(key, allowed):
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            lines.append(f"  {key}: {_show(a)} in the checkpoint, {_show(b)} now")
    return lines


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def check_resume_config(saved: dict, current: dict, checkpoint_epoch: int, path) -> None:
    """Refuse a resume that would train something else than the checkpoint: every differing training-relevant
    key is listed with both values. ``trainer.epochs`` may change (extend a finished run) but not below the
    checkpoint's epoch."""
    lines = config_differences(saved, current)
    epochs = current.get("trainer", {}).get("epochs")
    if isinstance(epochs, int) and epochs < checkpoint_epoch:
        lines.append(f"  trainer.epochs: {epochs} now, below the checkpoint's epoch {checkpoint_epoch}")
    if lines:
        raise ResumeMismatch(
            f"cannot resume from {path}: this run asks for other training values than the checkpoint was trained "
            f"with:\n" + "\n".join(lines) + "\nrun with the checkpoint's values, or train in a new run_dir "
            "(without trainer.resume=true)")
