"""Per-example auto-tuned perturbation radius (the paper's section 3.2, Algorithm 1).

:class:`AutoEpsScheduler` wraps an auto_LiRPA eps scheduler (``LinearScheduler``,
``SmoothedScheduler``, ...) and keeps one offset per training example, keyed by its
dataset index. Example ``i`` is trained at ``max(eps_base - off_i, 0)``; after its bounds
are computed at that radius, ``off_i = -margin_i * maxoff`` if its eq. 6 margin is
negative (not certified), else 0. The offset used at a visit is the one stored at the
previous visit of the same example.
"""
from __future__ import annotations

import copy
import math
from typing import Union

import torch

from ..errors import ArgumentError
from .deferred import DeferredChecks
from .device import resolve_device

# What a loop written for auto_LiRPA's schedulers calls on them.
SCHEDULER_INTERFACE = ("get_eps", "get_max_eps", "reached_max_eps", "step_epoch", "step_batch",
                       "update_loss", "train", "eval", "set_epoch_length")

_PLAIN = (bool, int, float, str, type(None))


def _is_plain(value) -> bool:
    """True for values that ``torch.load(weights_only=True)`` restores: numbers, strings, and containers of them."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class AutoEpsScheduler:
    """Algorithm 1 of the paper around any auto_LiRPA eps scheduler; a drop-in for it.

    Args:
        base_scheduler: an auto_LiRPA scheduler (``auto_LiRPA.eps_scheduler``); its
            ``get_eps()`` is ``eps_base``.
        num_examples: size of the training set; indices run over ``[0, num_examples)``.
        maxoff: the largest offset, in the same (pixel) units as eps.
        device: where the offsets live, normally the training device; None picks CUDA when available.
        process_group: under data parallelism, the ``torch.distributed`` group of the ranks that share one
            global batch (e.g. ``torch.distributed.group.WORLD``); None for one process. With a group,
            ``update`` gives every rank the offsets written by all ranks, so all ranks hold one table.
        sync_checks: True raises on bad margins at once (a host synchronisation per call); False counts
            them on the device, leaves the offsets of a batch with a bad margin unchanged, and raises
            from :meth:`check`.

    The scheduler interface (``step_epoch``, ``step_batch``, ``get_eps``, ...) is forwarded
    to the base scheduler, so a loop written for it runs unchanged; ``eps(indices)`` gives
    the per-example radii. Auto eps is a training tactic: in eval mode ``eps`` is
    ``eps_base`` for every example and ``update`` does nothing, so one loop can serve both
    (evaluation indices may then index a test set of any size).

    Index checks run where the indices are; a DataLoader yields them on the CPU, so the
    checks do not synchronise the GPU. If an index repeats within a batch, one of its
    margins is kept.
    """

    def __init__(self, base_scheduler, num_examples: int, maxoff: float,
                 device: Union[str, torch.device, None] = None, process_group=None, sync_checks: bool = True):
        missing = [name for name in SCHEDULER_INTERFACE if not callable(getattr(base_scheduler, name, None))]
        if missing or not hasattr(base_scheduler, "is_training"):
            raise TypeError(f"base_scheduler must follow auto_LiRPA's eps scheduler interface; "
                            f"{type(base_scheduler).__name__} lacks {missing or ['is_training']}")
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive int (the training set size), got {num_examples!r}")
        self.base = base_scheduler
        self.num_examples = num_examples
        self.maxoff = self.check_maxoff(maxoff)
        self.device = resolve_device(device)
        self.offsets = torch.zeros(num_examples, device=self.device)
        self.process_group = process_group
        self.sync_checks = bool(sync_checks)
        self.deferred = DeferredChecks({"margin": "AutoEpsScheduler.update got margins that are not finite eq. 6 "
                                                  "margins in [-1, 1] (those batches' offsets left unchanged)"})

    def __repr__(self) -> str:
        return f"AutoEpsScheduler({self.base!r}, num_examples={self.num_examples}, maxoff={self.maxoff})"

    # --- the per-example radius and Algorithm 1 -------------------------------------------

    def eps(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B,)`` radii for the examples ``indices``: ``max(eps_base - off, 0)`` in training, else eps_base."""
        indices = self._check_indices(indices, in_training_set=self.is_training)
        eps_base = float(self.base.get_eps())
        if not self.is_training:
            return torch.full(indices.shape, eps_base, dtype=self.offsets.dtype, device=self.device)
        return (eps_base - self.offsets[indices]).clamp(min=0.0)

    def update(self, indices: torch.Tensor, margin: torch.Tensor) -> None:
        """Store the offsets for the next visit from the eq. 6 margins ``(B,)`` computed at ``eps(indices)``.

        ``off = -margin * maxoff`` where ``margin < 0``, else 0. Nothing is written unless
        every input is valid. A no-op in eval mode.
        """
        indices = self._check_indices(indices, in_training_set=self.is_training)
        if not isinstance(margin, torch.Tensor) or margin.shape != indices.shape:
            shape = tuple(margin.shape) if isinstance(margin, torch.Tensor) else type(margin).__name__
            raise ValueError(f"margin must be a tensor of shape {tuple(indices.shape)} like indices, got {shape}")
        margin = margin.detach().to(device=self.device, dtype=self.offsets.dtype)
        # One check covers NaN, inf and values no eq. 6 margin can take (a NaN compares False).
        bad = ~(margin.abs() <= 1.0 + 1e-6)
        if not self.sync_checks:
            self.deferred.record("margin", bad)
        elif bad.any():
            where = bad.nonzero().flatten().tolist()
            raise ValueError(f"margin must be finite eq. 6 margins in [-1, 1]; {len(where)} bad value(s) "
                             f"{margin[bad][:5].tolist()} at batch positions {where[:5]}; offsets left unchanged")
        if not self.is_training:
            return
        new = torch.where(margin < 0, -margin * self.maxoff, torch.zeros_like(margin))
        if not self.sync_checks:  # "nothing written unless every input is valid", decided on the device
            new = torch.where(bad.any(), self.offsets[indices], new)
        if self.process_group is None:
            self.offsets[indices] = new
        else:
            self._write_from_all_ranks(indices, new)

    def _write_from_all_ranks(self, indices: torch.Tensor, new: torch.Tensor) -> None:
        """Write every rank's new offsets into every rank's table: one all-reduce of a dense ``(2, N)`` table.

        Why this is Algorithm 1 exactly: an example's new offset depends only on its own margin, computed at
        its own eps from the table as it stood before this global batch; the ranks' shards of a global batch
        are disjoint, and together they are the batch one process would take. So each example of the global
        batch is written by exactly one rank, with the value one process would write, and the sum over ranks
        of ``[value, 1]`` at its index is ``[value + 0 + ..., 1]``: exact in floating point. Examples outside
        the batch keep their offsets. (Should an index come from several ranks, the mean of their values is
        kept; one process keeps one of them.)
        A dense table rather than an all-gather of (index, offset) pairs: ranks' shards differ in size at
        an epoch's last batch, and agreeing on sizes would make the host wait for the device; 2N floats
        (400 KB for CIFAR-10) are small beside the gradients' all-reduce.
        """
        import torch.distributed as dist

        table = self.offsets.new_zeros(2, self.num_examples)
        table[0, indices] = new
        table[1, indices] = 1.0
        dist.all_reduce(table, group=self.process_group)
        written = table[1] > 0
        self.offsets.copy_(torch.where(written, table[0] / table[1].clamp(min=1.0), self.offsets))

    def check(self, where: str = "") -> None:
        """Raise the ValueError of any bad margin counted since the last check (with ``sync_checks=False``)."""
        self.deferred.raise_if_bad(where)

    # --- the auto_LiRPA scheduler interface, forwarded -------------------------------------

    @property
    def is_training(self) -> bool:
        return bool(self.base.is_training)

    def get_eps(self):
        """``eps_base``, the base scheduler's radius."""
        return self.base.get_eps()

    def get_max_eps(self):
        return self.base.get_max_eps()

    def reached_max_eps(self):
        return self.base.reached_max_eps()

    def step_epoch(self, *args, **kwargs):
        return self.base.step_epoch(*args, **kwargs)

    def step_batch(self, *args, **kwargs):
        return self.base.step_batch(*args, **kwargs)

    def update_loss(self, new_loss):
        return self.base.update_loss(new_loss)

    def train(self):
        return self.base.train()

    def eval(self):
        return self.base.eval()

    def set_epoch_length(self, epoch_length):
        return self.base.set_epoch_length(epoch_length)

    # --- logging ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Summary for logging (synchronises): mean offset, fraction of examples with a non-zero offset, max offset."""
        return {
            "mean_offset": float(self.offsets.mean()),
            "fraction_offset": float((self.offsets > 0).float().mean()),
            "max_offset": float(self.offsets.max()),
        }

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Offsets, ``maxoff`` and the base scheduler's position (auto_LiRPA's schedulers have no state_dict).

        The base scheduler's state is its attributes that are plain data (numbers, strings,
        containers of them): everything its ``get_eps`` and ``step_*`` read. The result loads
        with ``torch.load(..., weights_only=True)``.
        """
        base_state = {k: copy.deepcopy(v) for k, v in vars(self.base).items() if _is_plain(v)}
        return {
            "num_examples": self.num_examples,
            "maxoff": self.maxoff,
            "offsets": self.offsets.detach().cpu().clone(),
            "base_class": type(self.base).__name__,
            "base": base_state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly: offsets, ``maxoff`` and the base scheduler's position.

        Refuses a state saved for a different data set size or a different scheduler class.
        """
        if state.get("num_examples") != self.num_examples:
            raise ValueError(f"this state_dict holds offsets for {state.get('num_examples')} examples, "
                             f"but this scheduler has {self.num_examples}: it belongs to another data set")
        if state.get("base_class") != type(self.base).__name__:
            raise ValueError(f"this state_dict was saved around a {state.get('base_class')}, "
                             f"not this {type(self.base).__name__}")
        offsets = torch.as_tensor(state["offsets"])
        if offsets.shape != (self.num_examples,) or not torch.isfinite(offsets).all() or (offsets < 0).any():
            raise ValueError(f"state_dict offsets must be {self.num_examples} finite values >= 0")
        maxoff = self.check_maxoff(state["maxoff"])
        self.offsets.copy_(offsets.to(self.offsets.dtype))
        self.maxoff = maxoff
        vars(self.base).update(copy.deepcopy(state["base"]))

    # --- checks -----------------------------------------------------------------------------

    @staticmethod
    def check_maxoff(maxoff) -> float:
        """``maxoff`` as a float, or :class:`~lirpa_reweight.errors.ArgumentError`: a finite number >= 0."""
        try:
            number = float(maxoff)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0.0):
            raise ArgumentError("maxoff", maxoff, "a finite number >= 0 (pixel units, like eps)")
        return number

    def _check_indices(self, indices: torch.Tensor, in_training_set: bool) -> torch.Tensor:
        """Indices as a tensor on the offsets' device; in eval mode they may index another (test) set."""
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a tensor of dataset indices, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D (B,), got shape {tuple(indices.shape)}")
        # non_blocking: a blocking host-to-device copy would make the host wait for the device.
        if not in_training_set:
            return indices.to(self.device, non_blocking=True)
        outside = (indices < 0) | (indices >= self.num_examples)
        if outside.any():
            # The usual cause of an index past the end: len(loader), the number of batches, given as num_examples.
            hint = " (num_examples must be len(dataset), not len(loader))" if (indices >= self.num_examples).any() else ""
            raise IndexError(f"indices must lie in [0, {self.num_examples}); got {indices[outside][:5].tolist()}{hint}")
        return indices.to(self.device, non_blocking=True)
