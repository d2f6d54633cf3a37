"""The run directory: its files, one owner at a time, a metrics log a crash cannot tear (and its one reader), and
files written atomically. Plain Python (no torch, no Hydra), so ``summarize`` and ``plot`` read runs with it too.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from ..errors import ExpectedFailure

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
LOCK_NAME = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)

# What a run directory holds (written by training, read by evaluate, summarize and plot).
CONFIG = "config.yaml"  # the run's resolved config, written once the run may go ahead
METRICS = "metrics.jsonl"  # one JSON record per epoch
FINAL = "final.json"  # the final evaluation
FINAL_EXAMPLES = "final_examples.jsonl"  # its per-example results (an interrupted final evaluation resumes from it)
LAST = "last.pt"  # the newest checkpoint (LAST.prev: the one before)
BEST = "best.pt"  # the checkpoint of the best validation epoch
OVERRIDES = ".hydra/overrides.yaml"  # the command line's overrides


class RunDirectoryBusy(ExpectedFailure, RuntimeError):
    """Another process holds the run directory's lock."""


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
