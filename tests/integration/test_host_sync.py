"""The training step never makes the host wait for the device; the checks it used to sync for are deferred."""
import inspect

import pytest
import torch

from hostsync import auto_lirpa_checks_each_node_for_nan, count_host_syncs, in_auto_lirpa, optimizer_step_counters

from lirpa_reweight.training import build

TINY = ["data=synthetic", "data.in_shape=[1,8,8]", "data.num_train=48", "data.num_test=16", "trainer.batch_size=12",
        "trainer.device=cpu", "trainer.progress=false", "schedule.eps_train=0.05", "schedule.eps_eval=0.03",
        "reweight=on", "autoeps=on",
        "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'", "run_dir=unused"]


def built(compose, *extra):
    spec = build.read_config(compose([*TINY, *extra]))
    run = build.build_run(spec, torch.device("cpu"))
    return run, build.build_trainer(spec, run)


def steps_watched(loader, counter, ours, theirs):
    """Yield the loader's batches; record the syncs counted while the consumer (one training step) held each,
    split into those made by our code and those made inside auto_LiRPA."""
    for batch in loader:
        before = counter.counts.copy()
        yield batch
        new = counter.counts - before
        theirs.append(sum(n for (_, site), n in new.items() if in_auto_lirpa(site)))
        ours.append(sum(n for (_, site), n in new.items() if not in_auto_lirpa(site)))


@pytest.mark.parametrize("method", ["IBP", "CROWN-IBP", "SABR", "CC-IBP", "MTL-IBP", "IBP fused", "CROWN-IBP fused",
                                    "IBP kappa0"])
def test_training_steps_do_not_synchronise(method, compose):
    name, _, variant = method.partition(" ")
    fused = variant == "fused"
    extra = {"fused": ["bound.loss_fusion=true"], "kappa0": ["schedule.kappa_start=0", "schedule.kappa_end=0"]}
    run, trainer = built(compose, f"bound={name.lower().replace('-', '_')}", *extra.get(variant, []))
    trainer.train_epoch(run.epoch_loader(1), 1)
    ours, theirs = [], []
    with count_host_syncs(optimizer_step_counters(run.state.optimizer)) as counter:
        trainer.train_epoch(steps_watched(run.epoch_loader(2), counter, ours, theirs), 2)
    assert len(ours) == 4
    assert ours == [0, 0, 0, 0], counter.counts
    if fused:
        # auto_LiRPA's own loss-fusion code waits: its IBP asks whether the labels are unperturbed, its Exp
        # backward whether the last A is non-negative (one test each per pass). Nothing else there, nothing of ours.
        elsewhere = [n for (_, site), n in counter.counts.items() if in_auto_lirpa(site)
                     and not in_loss_fusion_code(site)]
        assert not elsewhere or auto_lirpa_checks_each_node_for_nan(), counter.counts
    elif not auto_lirpa_checks_each_node_for_nan():
        assert theirs == [0, 0, 0, 0], counter.counts
    assert counter.total > 0  # the epoch's logging point reads its sums: the counter does see syncs


def in_loss_fusion_code(site: str) -> bool:
    """Whether a call site lies in auto_LiRPA's loss-fusion special cases (``_IBP_loss_fusion``, the Exp backward)."""
    import auto_LiRPA.interval_bound as interval_bound
    from auto_LiRPA.operators import BoundExp

    path, _, line = site.rpartition(":")
    for function in (interval_bound._IBP_loss_fusion, BoundExp.bound_backward):
        lines, start = inspect.getsourcelines(function)
        if path == inspect.getsourcefile(function) and start <= int(line) < start + len(lines):
            return True
    return False


def test_the_counter_sees_each_kind_of_sync():
    x = torch.tensor([1.0, 0.0])
    with count_host_syncs() as counter:
        x.sum().item(), bool(x[0]), x.tolist(), x.nonzero()
    assert counter.total == 4


def test_bad_bounds_in_a_step_are_reported_at_the_epoch_end_naming_it(monkeypatch, compose):
    run, trainer = built(compose)
    classifier, autoeps = run.state.classifier, run.state.autoeps
    certify = classifier.certify

    def poisoned(*args, **kwargs):
        logits, lb = certify(*args, **kwargs)
        return logits, lb + torch.where(torch.arange(len(lb)) == 1, float("nan"), 0.0).unsqueeze(1)

    monkeypatch.setattr(classifier, "certify", poisoned)
    before = autoeps.offsets.clone()
    with pytest.raises(ValueError, match=r"epoch 7: lb had NaN or inf in [0-9]+ value\(s\)"):
        trainer.train_epoch(run.epoch_loader(1), 7)
    # Each batch held a NaN margin (the NaN also reached the weights): Algorithm 1 wrote nothing, as before.
    assert torch.equal(autoeps.offsets, before)
