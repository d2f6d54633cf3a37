"""Input checks that need not stop the device: counted on the device, read when the caller chooses.

Asking a CUDA tensor ``bad.any()`` inside a training step makes the host wait for the device. A
:class:`DeferredChecks` instead adds each check's count of bad values to a device tensor (no
synchronisation) and raises, naming every check that failed and how often, when :meth:`raise_if_bad`
is called: once per epoch in the trainer, or after each step by a drop-in user who wants it.
"""
from __future__ import annotations

from typing import Optional

import torch


class DeferredChecks:
    """Counts of bad inputs per named check, kept on the device until read.

    Args:
        messages: check name -> what was wrong, worded for an error message (e.g.
            ``"lb had NaN or inf"``); the count of offending values follows it.
    """

    def __init__(self, messages: dict[str, str]):
        self.messages = dict(messages)
        self._counts: Optional[torch.Tensor] = None  # (len(messages),) int64, on the device of the first record
        self._names = list(self.messages)

    def record(self, name: str, bad: torch.Tensor) -> None:
        """Add the number of True values of ``bad`` to check ``name``; never synchronises."""
        count = bad.sum().to(torch.int64)
        if self._counts is None or self._counts.device != count.device:
            previous = self._counts
            self._counts = torch.zeros(len(self._names), dtype=torch.int64, device=count.device)
            if previous is not None:
                self._counts += previous.to(count.device)
        self._counts[self._names.index(name)] += count

    def raise_if_bad(self, where: str = "", error: type = ValueError) -> None:
        """Raise ``error`` naming every check that failed since the last call (reads the counts: one sync).

        The counts are cleared either way, so one bad batch is reported once.
        """
        if self._counts is None:
            return
        counts, self._counts = self._counts.tolist(), None
        failed = [f"{self.messages[name]} in {count} value(s)" for name, count in zip(self._names, counts) if count]
        if failed:
            prefix = f"{where}: " if where else ""
            raise error(prefix + "; ".join(failed))
