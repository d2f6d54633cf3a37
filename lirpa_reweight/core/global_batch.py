"""Where one rank's examples sit in a global batch under data parallelism.

The training methods that draw random numbers per example (an attack's random start) draw them for the whole
global batch and keep their rows, so that several ranks together draw what one process draws
(``training.distributed.GlobalBatchSampler`` makes the slices).
"""
from __future__ import annotations

from typing import NamedTuple


class GlobalBatchSlice(NamedTuple):
    """Rows ``start:start + B`` of a global batch of ``size`` rows."""

    start: int
    size: int
