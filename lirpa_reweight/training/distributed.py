"""Data parallelism for the trainer: the process group from torchrun or SLURM, the global-batch sampler,
gradient averaging and rank-0 I/O. Plain torch; nothing of Hydra.

One process without torchrun or a multi-task SLURM step gets world size 1 and behaves exactly as
before: same batches, same numbers.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..core.global_batch import GlobalBatchSlice


@dataclass(frozen=True)
class Environment:
    """Where this process sits among the ranks, and how to reach rank 0."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # "torchrun", "slurm" or "none"
    local_world_size: int = 1  # ranks on this node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def environment(env: Optional[Mapping[str, str]] = None) -> Environment:
    """This process's place among the ranks, from torchrun's variables, else SLURM's, else one process.

    Under SLURM one task is one rank (``srun`` / submitit with ``tasks_per_node`` = GPUs per node):
    SLURM_PROCID, the step's task count (SLURM_STEP_NUM_TASKS, else SLURM_NTASKS) and SLURM_LOCALID give
    rank, world size and local rank, as in submitit's ``helpers.TorchDistributedEnvironment``; rank 0
    listens on the first host of SLURM_JOB_NODELIST, at MASTER_PORT if set, else a port derived from the
    job id. (A batch script with several tasks must start the trainer through ``srun``: run directly,
    the one process would wait for ranks that never start.)
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return Environment(rank=int(env["RANK"]), world_size=world,
                           local_rank=int(env.get("LOCAL_RANK", 0)), master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                           master_port=int(env.get("MASTER_PORT", 29500)), launcher="torchrun",
                           local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)))
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if tasks > 1 and "SLURM_PROCID" in env:
        job = int(env.get("SLURM_JOB_ID", "0"))
        nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
        return Environment(rank=int(env["SLURM_PROCID"]), world_size=tasks,
                           local_rank=int(env.get("SLURM_LOCALID", 0)),
                           master_addr=env.get("MASTER_ADDR") or first_slurm_host(env["SLURM_JOB_NODELIST"]),
                           master_port=int(env.get("MASTER_PORT", 20000 + job % 20000)), launcher="slurm",
                           local_world_size=max(tasks // max(nodes, 1), 1))
    return Environment()


def setup(device: torch.device, env: Optional[Environment] = None, timeout_minutes: float = 30):
    """Join the ranks' process group when there are several ranks; returns (environment, group or None).

    NCCL for CUDA devices, gloo otherwise. On CUDA each rank takes the GPU of its local rank, so
    ``device`` "cuda" becomes "cuda:<local rank>"; the returned environment's device is that one.
    """
    env = environment() if env is None else env
    if not env.distributed:
        return env, None
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return env, dist.group.WORLD


def rank_device(device: torch.device, env: Environment) -> torch.device:
    """The device of this rank: CUDA devices are one per local rank."""
    if device.type == "cuda" and env.distributed:
        return torch.device("cuda", env.local_rank)
    return device


def teardown(group) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()


def is_main(group) -> bool:
    """True on the rank that writes files (rank 0), and in a single process."""
    return group is None or dist.get_rank(group) == 0


def world_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def barrier(group) -> None:
    if group is not None:
        dist.barrier(group)


class GlobalBatchSampler:
    """Each rank's contiguous slice of each global batch of a seeded random permutation.

    The permutation is the one ``DataLoader(shuffle=True, generator=generator)`` draws
    (``torch.randperm(n, generator=generator)`` at the start of the epoch's iteration), cut into
    global batches of ``batch_size`` in order; rank r takes the r-th of ``world_size`` near-equal
    contiguous parts of each. So the ranks' shards of global batch k together are exactly the
    single-process batch k, and with one rank this sampler yields the same batches as the
    ``shuffle=True`` loader. Pass it as a DataLoader's ``batch_sampler`` with the same generator.
    """

    def __init__(self, num_examples: int, batch_size: int, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if batch_size < world_size:
            raise ValueError(f"the global batch size {batch_size} (trainer.batch_size) must be at least the number "
                             f"of ranks {world_size}: every rank needs examples in every batch")
        last = num_examples % batch_size
        if 0 < last < world_size:
            raise ValueError(f"the last global batch would hold {last} example(s) ({num_examples} % batch size "
                             f"{batch_size}), fewer than the {world_size} ranks: choose a batch size or "
                             "training set size that leaves none or at least one example per rank")
        self.num_examples, self.batch_size, self.generator = num_examples, batch_size, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_examples, generator=self.generator)
        for batch in order.split(self.batch_size):
            yield batch.tensor_split(self.world_size)[self.rank].tolist()

    def slice_of(self, batch_number: int) -> GlobalBatchSlice:
        """This rank's rows of global batch ``batch_number`` of an epoch (as ``tensor_split`` cuts it)."""
        size = min(self.batch_size, self.num_examples - batch_number * self.batch_size)
        small, extra = divmod(size, self.world_size)  # the first ``extra`` parts hold one more
        return GlobalBatchSlice(self.rank * small + min(self.rank, extra), size)


def shard(num_examples: int, group) -> range:
    """This rank's contiguous part of ``range(num_examples)`` (for evaluation; parts differ in size by <= 1)."""
    parts = torch.arange(num_examples).tensor_split(world_size(group))
    part = parts[rank(group)]
    return range(int(part[0]), int(part[-1]) + 1) if len(part) else range(0)


def all_reduce_sum(values: torch.Tensor, group) -> torch.Tensor:
    """The sum over ranks (in place; a no-op for one process)."""
    if group is not None:
        dist.all_reduce(values, group=group)
    return values


def average_gradients(parameters: Iterable[nn.Parameter], group) -> None:
    """Average the parameters' gradients over the ranks: one all-reduce of one flat buffer.

    Why not DistributedDataParallel: DDP's reducer is armed by its wrapper's ``forward`` and hooks the
    gradients of the module it wraps, but auto_LiRPA's bounds come from ``BoundedModule.compute_bounds``,
    not from ``forward``; wrapping the bounded graph would leave the reducer unprepared for the bound
    computation's backward. Averaging after ``backward`` is what DDP computes (sum over ranks / N), with
    no dependence on how the graph was traversed. Gradients of None (unused parameters) count as zero.
    """
    if group is None:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset:offset + size].view_as(p).clone() if p.grad is None else p.grad.copy_(
            flat[offset:offset + size].view_as(p))
        offset += size


def broadcast_state(module: nn.Module, group, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (at the start, and BatchNorm statistics before
    an evaluation: each rank's running statistics follow its own shards)."""
    if group is None:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src, group=group)


def default_workers(device: torch.device, ranks_per_node: int = 1, cores: Optional[int] = None) -> int:
    """DataLoader workers when the config leaves them open: none on a CPU-only run (the training itself
    wants the cores), else up to 8 per rank from this node's cores, one core left to each rank's own loop.
    CIFAR augmentation in the main process starves a GPU; a few workers keep it fed."""
    if device.type != "cuda":
        return 0
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) \
        if cores is None else cores
    return max(0, min(8, cores // max(ranks_per_node, 1) - 1))
