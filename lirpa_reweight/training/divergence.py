"""Stop a diverging run: a loss that is not finite, or that explodes past ``factor`` times its starting scale.

Each step's check is device-side (``torch.where`` into a first-bad-step tensor), so the training step never waits
for the host; the loop reads the flag once per epoch, where it already synchronises to log, and stops there
before anything of the bad epoch is written. Plain torch: usable from any loop.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import ArgumentError, ExpectedFailure


class DivergenceError(ExpectedFailure, RuntimeError):
    """Training diverged; the message names the epoch, the step and the loss, and what to change."""


class DivergenceMonitor:
    """Watch the training loss step by step without a host sync.

    Args:
        factor: a loss above ``factor * reference`` counts as diverged; None checks only for non-finite losses.
            ``reference`` is the run's first training loss, floored at 1 (cross-entropy scale: log of the class
            count at initialisation), and kept in :meth:`state_dict` so a resumed run uses the same one.
        device: where the losses live.
        hint: what to suggest in the error (e.g. which setting to lower).
        process_group: under data parallelism, the ranks' group: :meth:`check` then raises on every rank when
            any rank diverged, so that no rank goes on into a collective the stopped one never joins.
    """

    def __init__(self, factor: Optional[float] = 1e4, device=None,
                 hint: str = "lower the learning rate or clip gradients", process_group=None):
        self.factor, self.hint = self.check_factor(factor), hint
        self.process_group = process_group
        self.reference: Optional[torch.Tensor] = None
        self._device = device
        self.start_epoch()

    @staticmethod
    def check_factor(factor: Optional[float]) -> Optional[float]:
        """``factor`` if it is None or a finite number > 1, else :class:`~lirpa_reweight.errors.ArgumentError`."""
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                                   or not math.isfinite(factor) or not factor > 1):
            raise ArgumentError("factor", factor, "null (stop only on non-finite losses) or a number > 1")
        return factor

    def start_epoch(self) -> None:
        self.steps = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self._device)
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=self._device)

    def observe(self, loss: torch.Tensor) -> None:
        """Record this step's loss (a scalar tensor); no host synchronisation."""
        loss = loss.detach().to(torch.float64)
        self.steps += 1
        if self.reference is None:
            self.reference = torch.clamp(torch.nan_to_num(loss, nan=1.0, posinf=1.0), min=1.0)
        bad = ~torch.isfinite(loss)
        if self.factor is not None:
            bad = bad | (loss > self.factor * self.reference)
        first = bad & (self._first_bad < 0)
        self._first_bad = torch.where(first, self.steps, self._first_bad)
        self._bad_loss = torch.where(first, loss, self._bad_loss)

    def check(self, epoch: int, cause: Optional[BaseException] = None) -> None:
        """Raise :class:`DivergenceError` if a step of this epoch diverged (one host read)."""
        step = int(self._first_bad.item())
        if self.process_group is not None:
            import torch.distributed as dist

            anywhere = (self._first_bad >= 0).to(torch.int32)
            dist.all_reduce(anywhere, op=dist.ReduceOp.MAX, group=self.process_group)
            if step < 0 and bool(anywhere):
                raise DivergenceError(f"training diverged at epoch {epoch} on another rank (its log names the step); "
                                      f"nothing of this epoch was saved. Start again with a smaller step: "
                                      f"{self.hint}") from cause
        if step < 0:
            return
        loss = float(self._bad_loss.item())
        reference = float(self.reference.item())
        what = ("is not finite" if not math.isfinite(loss) else
                f"exceeds {self.factor:g} x the run's starting loss {reference:.4g}")
        raise DivergenceError(f"training diverged at epoch {epoch}, step {step} (of {self.steps} this epoch): the "
                              f"loss {loss:.4g} {what}; nothing of this epoch was saved. Start again with a "
                              f"smaller step: {self.hint}") from cause

    def check_failure(self, epoch: int, error: BaseException, module: torch.nn.Module) -> None:
        """A step raised ``error`` (e.g. a hook found NaN bounds): raise :class:`DivergenceError` from it if the
        loss went bad first or the weights are no longer finite; otherwise return (the error is something else)."""
        self.check(epoch, cause=error)
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            raise DivergenceError(f"training diverged at epoch {epoch}: the weights became non-finite in the update "
                                  f"of step {self.steps}, and step {self.steps + 1} failed ({error}); nothing of "
                                  f"this epoch was saved. Start again with a smaller step: {self.hint}") from error

    def state_dict(self) -> dict:
        return {"reference": None if self.reference is None else float(self.reference.item())}

    def load_state_dict(self, state: dict) -> None:
        reference = state.get("reference")
        self.reference = None if reference is None else torch.tensor(reference, dtype=torch.float64,
                                                                      device=self._device)


def require_finite_parameters(module: torch.nn.Module, what: str) -> None:
    """Refuse to save non-finite weights: raise :class:`DivergenceError` naming the first bad parameter."""
    finite = torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all()
    if not bool(finite):
        name = next(n for n, p in module.named_parameters() if not torch.isfinite(p).all())
        raise DivergenceError(f"{what}: parameter {name!r} is not finite; not saved (training diverged)")
