"""Checkpoints: written atomically, loaded safely (``weights_only=True``), with the RNG state for exact resumes."""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, Path]


def _write_atomically(path: PathLike, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomically(payload: dict, path: PathLike) -> None:
    """torch.save ``payload`` to ``path`` atomically."""
    _write_atomically(path, lambda file: torch.save(payload, file))


def copy_atomically(source: PathLike, path: PathLike) -> None:
    """Copy a checkpoint file to ``path`` atomically (no second serialisation of the same state)."""
    with open(source, "rb") as src:
        _write_atomically(path, lambda file: shutil.copyfileobj(src, file))


def load(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_atomically`, refusing arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


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
