"""Count the calls that make the host wait for the device: a CPU-runnable proxy for GPU synchronisations.

On a GPU every ``Tensor.item``, ``bool(tensor)``, ``Tensor.tolist``, ``Tensor.nonzero`` of a device tensor, and
``torch.cuda.synchronize``, stalls the host until the device catches up. :func:`count_host_syncs` patches them
to count their calls (on any device, so the count works on a CPU-only machine), except those on tensors that
stay on the host by design even when training on a GPU:

* the optimizer's ``step`` counters (``torch.optim`` keeps them on the CPU unless ``capturable``/``fused``);
* the data loader's example indices, checked where the loader made them (``AutoEpsScheduler._check_indices``).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections import Counter
from typing import Iterable, Iterator, Optional

import torch

PATCHED = (("item", torch.Tensor), ("__bool__", torch.Tensor), ("tolist", torch.Tensor), ("nonzero", torch.Tensor))
HOST_SIDE_CALLERS = ("_check_indices",)


class SyncCounter:
    """Calls seen so far, by name and caller (``counts``); ``total`` is their sum."""

    def __init__(self, host_tensors: Iterable[torch.Tensor] = ()):
        self.counts: Counter = Counter()
        self.host_ids = {id(t) for t in host_tensors}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def optimizer_step_counters(optimizer: Optional[torch.optim.Optimizer]) -> list:
    """The optimizer's per-parameter ``step`` tensors (host-side by design); create them with one step first."""
    if optimizer is None:
        return []
    return [s["step"] for s in optimizer.state.values() if isinstance(s.get("step"), torch.Tensor)]


@contextlib.contextmanager
def count_host_syncs(host_tensors: Iterable[torch.Tensor] = ()) -> Iterator[SyncCounter]:
    """Within the block, count host-synchronising calls (see the module's docstring)."""
    counter = SyncCounter(host_tensors)
    originals = []

    def patch(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            caller = sys._getframe(1)
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if (tensor is None or id(tensor) not in counter.host_ids) and caller.f_code.co_name not in HOST_SIDE_CALLERS:
                counter.counts[(name, f"{caller.f_code.co_filename}:{caller.f_lineno}")] += 1
            return original(*args, **kwargs)

        originals.append((owner, name, original))
        setattr(owner, name, counted)

    for name, owner in PATCHED:
        patch(owner, name)
    patch(torch.cuda, "synchronize")
    try:
        yield counter
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def auto_lirpa_checks_each_node_for_nan() -> bool:
    """Upstream auto_LiRPA (0.7.x) looks for NaN in every node's IBP bounds (``.any()``: a host sync per node);
    PyPI's 0.3 does not. Such syncs are auto_LiRPA's own, not the training step's code."""
    try:
        import auto_LiRPA.interval_bound as interval_bound
    except ImportError:
        return False
    return "isnan(node.lower).any()" in inspect.getsource(interval_bound)


def in_auto_lirpa(site: str) -> bool:
    """Whether a call site (``file:line``, as :class:`SyncCounter` records them) lies inside auto_LiRPA."""
    return f"{os.sep}auto_LiRPA{os.sep}" in site
