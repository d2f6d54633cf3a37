"""Checkpoints: written atomically, loaded safely (``weights_only=True``), with the RNG state for exact resumes.

``save_rotating`` keeps the previous good file as ``NAME.prev``; ``load_with_fallback`` resumes from it when the
newest cannot be read. A file that cannot be read is a :class:`CheckpointError` naming it.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import ExpectedFailure
from .rundir import write_atomically

PathLike = Union[str, Path]
log = logging.getLogger(__name__)


class CheckpointError(ExpectedFailure, ValueError):
    """A checkpoint file that exists but cannot be read (truncated, empty, overwritten, or not ours)."""


def save_atomically(payload: dict, path: PathLike) -> None:
    """torch.save ``payload`` to ``path`` atomically."""
    write_atomically(path, lambda file: torch.save(payload, file))


def copy_atomically(source: PathLike, path: PathLike) -> None:
    """Copy a checkpoint file to ``path`` atomically (no second serialisation of the same state)."""
    with open(source, "rb") as src:
        write_atomically(path, lambda file: shutil.copyfileobj(src, file))


def load(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_atomically`, refusing arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is damaged: it is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # torch's own message may advise weights_only=False, which would run whatever the file holds: not shown.
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({path.stat().st_size} bytes, "
                              f"{type(error).__name__} while reading it): it was cut short, overwritten, or "
                              "written by another program") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return state


def previous_path(path: PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_rotating(payload: dict, path: PathLike) -> None:
    """Save ``payload`` to ``path`` atomically, first turning the file already there into ``path.prev``.

    Both steps are renames, so at every moment ``path`` is a whole file (the old one, then the new one) and
    ``path.prev`` is the previous whole file.
    """
    path = Path(path)
    if path.exists():
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.prev.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            os.unlink(tmp)
            try:
                os.link(path, tmp)  # a second name for the current file: no copy
            except OSError:  # a file system without hard links
                shutil.copyfile(path, tmp)
            os.replace(tmp, previous_path(path))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    save_atomically(payload, path)


def load_with_fallback(path: PathLike, map_location: Any = "cpu") -> tuple[dict, Path]:
    """Load ``path``, or ``path.prev`` when ``path`` is damaged or missing; returns the state and the file used.

    Falling back is logged as a warning naming both files; when neither can be read the error names both.
    """
    path, prev = Path(path), previous_path(path)
    try:
        return load(path, map_location), path
    except (CheckpointError, FileNotFoundError) as error:
        if not prev.is_file():
            raise
        try:
            state = load(prev, map_location)
        except CheckpointError as prev_error:
            raise CheckpointError(f"{error}; the previous copy is damaged too: {prev_error}") from None
        log.warning("%s; resuming from the previous checkpoint %s (epoch %s) instead", error, prev,
                    state.get("epoch"))
        return state, prev


def rng_state() -> dict:
    """The random state a CPU training run draws from (torch, CUDA when present, Python's ``random``)."""
    state = {"torch": torch.get_rng_state(), "python": _python_state_as_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_as_lists(state: tuple) -> list:
    # weights_only loading accepts lists of ints, so store the tuple state as lists.
    version, internal, gauss = state
    return [version, list(internal), gauss]
