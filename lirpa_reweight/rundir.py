"""The run directory's bookkeeping: one owner at a time, a metrics log a crash cannot tear, and the rule for
what a resume may change. Plain Python (no torch, no Hydra), so ``summarize`` and ``plot`` can use it too.
"""
from __future__ import annotations

import datetime
import hashlib
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
LOCK_NAME = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)

# Keys that do not change what is trained: where the data and the run live, how fast and how visibly it runs,
# when it stops early or checkpoints, how it is finally evaluated, and the divergence guard. A resume may change
# them (config.yaml then records the new values); trainer.epochs may change too, but not below the checkpoint.
RESUME_MAY_CHANGE = (
    "name", "run_dir", "sweep_name", "objectives", "data.root", "data.download", "trainer.resume", "trainer.device",
    "trainer.workers", "trainer.pin_memory", "trainer.progress", "trainer.stop_after_epochs", "trainer.checkpoint_every",
    "trainer.divergence_factor", "trainer.epochs", "eval.",
)


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


class ResumeMismatch(ValueError):
    """A resume asks for training-relevant values other than those the checkpoint was trained with."""


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, holding who took it (pid, host, start time, command).

    A second process (or a second lock in the same process) on the same directory fails at once, naming the
    holder. The lock goes with the process, so a killed run never leaves a stale one behind.
    """

    def __init__(self, run_dir: PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise RunDirectoryBusy(f"run directory {self.path.parent} is in use by another process "
                                   f"({_describe_holder(holder)}); wait for it to end or stop it, then run again"
                                   ) from None
        holder = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      command=" ".join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def append_metrics(path: PathLike, record: dict) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor: a crash leaves the line whole or
    absent, never half of it (a line is far below a page, the size one write puts down in one piece)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes (disk full?)")
    finally:
        os.close(fd)


def read_metrics(path: PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl``; blank lines and a torn last line (a run killed by an older version
    mid-write) are skipped with a warning, any other bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if number < len(lines):  # the empty string after the final newline is not a blank line
                log.warning("%s:%d is blank: skipped", path, number)
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("not an epoch record")
        except ValueError as error:
            if all(not rest.strip() for rest in lines[number:]):
                log.warning("%s:%d is a torn last line (%s): skipped", path, number, error)
                continue
            raise ValueError(f"{path}:{number} is not a metrics record ({error}); fix or remove that line") from None
        records.append(record)
    return records


def write_atomically(path: PathLike, write, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place: a crash mid-write
    leaves the previous file intact, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it an ordinary file's permissions
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: PathLike, text: str) -> None:
    write_atomically(path, lambda file: file.write(text), binary=False)


def keep_metrics_up_to(path: PathLike, epoch: int) -> list[dict]:
    """Rewrite ``metrics.jsonl`` (atomically) with the records of epochs ``<= epoch`` only, the ones a checkpoint
    at ``epoch`` stands behind; warn when some of those epochs have no record. Returns the kept records."""
    path = Path(path)
    kept = [record for record in read_metrics(path) if record["epoch"] <= epoch]
    write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))
    missing = sorted(set(range(1, epoch + 1)) - {record["epoch"] for record in kept})
    if missing:
        log.warning("%s has no record of epoch(s) %s, which the checkpoint has trained; they cannot be rebuilt, "
                    "so the file (and plots of it) start at epoch %d", path, _ranges(missing), missing[-1] + 1)
    return kept


def _ranges(numbers: list[int]) -> str:
    spans, start = [], numbers[0]
    for previous, current in zip(numbers, numbers[1:] + [None]):
        if current != previous + 1:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(spans)


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _may_change(key: str, allowed: Iterable[str]) -> bool:
    return any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule in allowed)


_ABSENT = object()


def config_differences(saved: dict, current: dict, allowed: Iterable[str] = RESUME_MAY_CHANGE) -> list[str]:
    """``key: saved -> current`` for every leaf key (dotted) whose value differs and that is not ``allowed``."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if _may_change(key, allowed):
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            lines.append(f"  {key}: {_show(a)} in the checkpoint, {_show(b)} now")
    return lines


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def check_resume_config(saved: dict, current: dict, checkpoint_epoch: int, path: PathLike) -> None:
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


def default_run_name(data: str, model: str) -> str:
    """The run name when no experiment preset sets one: the root config is the mnist_quick recipe, so its own
    data and model keep that name; any other pair is named after what it trains."""
    return "mnist_quick" if (data, model) == ("mnist", "cnn_4layer") else f"{data}_{model}"


def run_dirname(overrides: str, max_length: int = 120) -> str:
    """A run directory name from Hydra's override_dirname: "default" when empty, and shortened with a
    hash when too long for a file name (the full overrides stay in .hydra/overrides.yaml)."""
    if not overrides:
        return "default"
    if len(overrides) <= max_length:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{overrides[:max_length]}...{digest}"

