"""Per-example results of an evaluation as JSON lines, so that an interrupted evaluation resumes where it stopped.

The first line is a header naming what the results depend on (the model's weights, eps, the cascade's plan);
each further line is one example's record, keyed by its dataset index, appended (and flushed) batch by batch. A
log whose header differs is not resumed: ``evaluate`` refuses it (naming its key), training starts it afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import ArgumentError


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's weights and buffers (what the outcomes depend on)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ExamplesLog:
    """``path``'s records (``done``: index -> record) written under ``header``; ``append`` adds a batch's.

    ``restart_on_mismatch``: a log written under another header is started afresh (training's own file) rather
    than refused (a file the user named as ``key``)."""

    def __init__(self, path, header: dict, key: str = "examples_log", restart_on_mismatch: bool = False):
        self.path, self.header = Path(path), json.loads(json.dumps(header))
        self.done: dict[int, dict] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            lines = self.path.read_text().splitlines()
            written = _parse(lines[0]) if lines else None
            if written is not None and written.get("header") == self.header:
                for line in lines[1:]:
                    record = _parse(line)  # a line cut short by the interruption is dropped, and redone
                    if record is not None and "index" in record:
                        self.done[int(record["index"])] = record
                self._rewrite()
                return
            if not restart_on_mismatch:
                raise ArgumentError(key, str(path), "a log written by another model, eps or cascade; name a new "
                                                    "file, or delete this one to start again")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite()

    def _rewrite(self) -> None:
        """The header and the complete records only (drops a torn last line before appending after it)."""
        lines = [json.dumps({"header": self.header})] + [json.dumps(r) for r in self.done.values()]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)

    def append(self, records: Iterable[dict]) -> None:
        records = list(records)
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done.update({int(r["index"]): r for r in records})


def _parse(line: str) -> Optional[dict]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
