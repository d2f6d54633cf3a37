"""Data parallelism on CPU with gloo: 2 ranks equal one process on the same global batches."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from support import TINY_DDP, free_port, launch, metrics

import lirpa_reweight  # noqa: F401
from auto_LiRPA.eps_scheduler import FixedScheduler
from lirpa_reweight import methods
from lirpa_reweight.training import distributed
from lirpa_reweight.core.autoeps import AutoEpsScheduler
from lirpa_reweight.core.bounds import BoundedClassifier
from lirpa_reweight.core.margins import fused_margin
from lirpa_reweight.core.reweight import WeightedRobustLoss

N, SHAPE, CLASSES, BATCH, STEPS = 23, (1, 3, 3), 3, 7, 4  # 23 = 3 batches of 7 + 2: uneven shards, short last batch


def test_sampler_with_one_rank_gives_the_shuffled_loaders_batches_and_ranks_split_them():
    data = TensorDataset(torch.arange(N))
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = [b[0].tolist() for b in DataLoader(data, batch_size=BATCH, shuffle=True, generator=gen_a)]
    sampler = distributed.GlobalBatchSampler(N, BATCH, gen_b)
    assert [b[0].tolist() for b in DataLoader(data, batch_sampler=sampler, generator=gen_b)] == expected
    shards = []
    for rank in range(2):
        gen = torch.Generator().manual_seed(5)
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # what the DataLoader draws first
        shards.append(list(distributed.GlobalBatchSampler(N, BATCH, gen, rank=rank, world_size=2)))
    assert [a + b for a, b in zip(*shards)] == expected
    assert [len(b) for b in shards[0]] == [4, 4, 4, 1] and [len(b) for b in shards[1]] == [3, 3, 3, 1]


def test_sampler_refuses_a_last_batch_with_fewer_examples_than_ranks():
    with pytest.raises(ValueError, match="last global batch would hold 2 example"):
        distributed.GlobalBatchSampler(23, 7, torch.Generator(), rank=0, world_size=3)


def test_environment_from_torchrun_slurm_or_nothing():
    assert not distributed.environment({}).distributed
    env = distributed.environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                                   "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (1, 4, 1, "h", "torchrun")
    env = distributed.environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                                   "SLURM_JOB_NODELIST": "gpu[07-09,12]", "SLURM_JOB_ID": "123"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (5, 8, 1, "gpu07", 20123)
    assert env.launcher == "slurm" and env.local_world_size == 8
    env = distributed.environment({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4",
                                   "SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_NODELIST": "a1,b2"})
    assert (env.world_size, env.local_world_size, env.master_addr) == (4, 2, "a1")
    assert not distributed.environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).distributed
    assert distributed.first_slurm_host("node1,node2") == "node1"


def data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand((N,) + SHAPE, generator=gen), torch.randint(0, CLASSES, (N,), generator=gen)


def run_steps(rank, world_size, group, alpha, method_name="IBP"):
    """STEPS steps of the hooks' loop on this rank's slices of the global batches; returns what to compare.
    With an attacking method the ranks draw the random starts of the whole global batch and keep their rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, CLASSES))  # no BatchNorm
    options = METHOD_OPTIONS[method_name]
    clf = BoundedClassifier(model, torch.rand((2,) + SHAPE), device="cpu", sync_checks=False,
                            loss_fusion=options.get("loss_fusion", False))
    criterion = WeightedRobustLoss(gamma=4.0, alpha=alpha, process_group=group, sync_checks=False)
    autoeps = AutoEpsScheduler(FixedScheduler(0.2), N, maxoff=0.15, device="cpu", process_group=group,
                               sync_checks=False)
    autoeps.train()
    optimizer = torch.optim.SGD(clf.parameters(), lr=0.5)
    x, y = data()
    method = methods.build_method(method_name.split()[0], **options)
    gen = torch.Generator().manual_seed(3)
    # kappa 0: the clean logits feed no loss, so the step skips their pass (BoundedClassifier.certify's clean)
    kappa, clean = (0.0, "none") if method_name.endswith("kappa 0") else (0.3, "grad")
    losses, grads = [], []
    sampler = distributed.GlobalBatchSampler(N, BATCH, gen, rank, world_size)
    batches = list(sampler) * 2
    for step, index in enumerate(batches[:STEPS]):
        index = torch.tensor(index)
        batch_slice = sampler.slice_of(step % len(sampler)) if group is not None else None
        logits, lb, robust_losses = method(clf, x[index], y[index], autoeps.eps(index), 1.0, batch_slice, clean=clean)
        assert clean == "grad" or logits is None  # the probe found skipping the clean pass sound here
        if lb is None:  # loss fusion: the bounds of the robust CE and their fused margin
            weighted = criterion.compute_from_losses(robust_losses, fused_margin(robust_losses.detach()), logits,
                                                     y[index], kappa=kappa)
        else:
            weighted = criterion.compute(lb, logits, y[index], kappa=kappa, robust_losses=robust_losses)
        loss = weighted.loss
        autoeps.update(index, weighted.margins)
        optimizer.zero_grad()
        loss.backward()
        distributed.average_gradients(clf.parameters(), group)
        losses.append(distributed.all_reduce_sum(loss.detach().clone(), group) / world_size)
        grads.append(torch.cat([p.grad.flatten() for p in clf.parameters()]))
        optimizer.step()
    return {"losses": torch.stack(losses), "grads": torch.stack(grads), "offsets": autoeps.offsets.clone()}


# alpha 0: the global softmax path of the weights; SABR, MTL-IBP: a random-start attack in the step (MTL-IBP:
# per-example losses too); fused: loss fusion's per-example bounds (CROWN-IBP at beta 0.5: both bound passes);
# kappa 0: the bounds without the clean pass
CASES = ((0.1, "IBP"), (0.0, "IBP"), (0.1, "SABR"), (0.1, "MTL-IBP"), (0.1, "IBP fused"), (0.1, "CROWN-IBP fused"),
         (0.1, "SABR kappa 0"))
METHOD_OPTIONS = {"IBP": {}, "SABR": {"lambda_start": 0.5, "attack": {"steps": 2}},
                  "SABR kappa 0": {"lambda_start": 0.5, "attack": {"steps": 2}},
                  "MTL-IBP": {"alpha_start": 0.3, "attack": {"steps": 2}}, "IBP fused": {"loss_fusion": True},
                  "CROWN-IBP fused": {"loss_fusion": True, "beta_start": 0.5, "beta_end": 0.5}}


def _rank_main(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for alpha, method in CASES:  # one spawn for all: starting a process costs more than the steps
            torch.save(run_steps(rank, 2, dist.group.WORLD, alpha, method), f"{out}.{alpha}.{method}.{rank}")
    finally:
        dist.destroy_process_group()


def test_global_batch_slices_are_the_rows_each_rank_is_given():
    for num_examples, world_size in ((N, 1), (N, 2), (25, 3), (26, 4)):  # shards of 3/2/2, 2/2/2/1, ...
        samplers = [distributed.GlobalBatchSampler(num_examples, BATCH, torch.Generator().manual_seed(5), rank,
                                                   world_size) for rank in range(world_size)]
        single = list(distributed.GlobalBatchSampler(num_examples, BATCH, torch.Generator().manual_seed(5)))
        shards = [list(sampler) for sampler in samplers]
        for number, whole in enumerate(single):
            for sampler, batches in zip(samplers, shards):
                part, where = batches[number], sampler.slice_of(number)
                assert where.size == len(whole) and whole[where.start:where.start + len(part)] == part


def test_two_gloo_ranks_equal_one_process_on_the_same_global_batches(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_rank_main, args=(free_port(), out), nprocs=2)
    for (alpha, method), rank in [(case, rank) for case in CASES for rank in range(2)]:
        single = run_steps(0, 1, None, alpha, method)
        ranked = torch.load(f"{out}.{alpha}.{method}.{rank}")
        assert (single["offsets"] > 0).sum() >= 5  # Algorithm 1 did write offsets
        torch.testing.assert_close(ranked["offsets"], single["offsets"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ranked["losses"], single["losses"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ranked["grads"], single["grads"], rtol=1e-4, atol=1e-6)


TINY = TINY_DDP


def test_torchrun_two_ranks_write_one_set_of_outputs_and_resume_on_one_rank(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    launch([*TINY, f"hydra.run.dir={run_dir}", "trainer.stop_after_epochs=1"], tmp_path, ranks=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written elsewhere by any rank
    assert [(m["epoch"], m["world_size"]) for m in metrics(run_dir)] == [(1, 2)]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "world_size: 2" in (run_dir / "config.yaml").read_text()
    launch([*TINY, f"hydra.run.dir={run_dir}", "trainer.resume=true"], tmp_path, ranks=1)
    launch([*TINY, f"hydra.run.dir={reference}"], tmp_path, ranks=1)
    resumed, single = metrics(run_dir), metrics(reference)
    assert [(m["epoch"], m["world_size"]) for m in resumed] == [(1, 2), (2, 1)]
    for got, want in zip(resumed, single):
        for key in ("loss", "clean_loss", "robust_loss", "clean_error", "verified_error", "autoeps_mean_offset",
                    "val_verified_error"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    final, want = (json.loads((d / "final.json").read_text()) for d in (run_dir, reference))
    assert final["world_size"] == 1 and final["clean_error"] == want["clean_error"]


def test_auto_lirpa_bounds_syncbatchnorm_as_a_plain_per_rank_batchnorm():
    """The README's finding: the bounded graph is rebuilt from a trace, where SyncBatchNorm runs as BatchNorm, so
    its bounds use the statistics of the rank's own shard; SyncBatchNorm would sync the clean pass only."""
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, CLASSES))
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    clf = BoundedClassifier(model, torch.rand(2, 1, 3, 3), device="cpu")
    kinds = {type(node).__name__ for node in clf.bounded.modules()}
    assert "BoundBatchNormalization" in kinds and not any("Sync" in kind for kind in kinds)


def test_loader_workers_default_by_device_and_cores():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert distributed.default_workers(cpu, cores=32) == 0  # the CPU run wants its cores for training
    assert distributed.default_workers(cuda, cores=32) == 8
    assert distributed.default_workers(cuda, ranks_per_node=4, cores=16) == 3
    assert distributed.default_workers(cuda, cores=1) == 0
