"""The training step never makes the host wait for the device; the checks it used to sync for are deferred."""
import pytest
import torch
from hydra import compose, initialize_config_module

from lirpa_reweight import recipe
from lirpa_reweight.hostsync import (auto_lirpa_checks_each_node_for_nan, count_host_syncs, in_auto_lirpa,
                                     optimizer_step_counters)
from lirpa_reweight.train import train_epoch

TINY = ["data=synthetic", "data.in_shape=[1,8,8]", "data.num_train=48", "data.num_test=16", "trainer.batch_size=12",
        "trainer.device=cpu", "trainer.progress=false", "schedule.eps_train=0.05", "reweight=on", "autoeps=on",
        "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'"]


def build(*extra):
    with initialize_config_module(config_module="lirpa_reweight.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, *extra])
    torch.manual_seed(0)
    dataset = recipe.train_dataset(cfg)
    info = recipe.data_info(dataset)
    classifier = recipe.build_classifier(cfg.model.name, info, device="cpu", sync_checks=False)
    criterion, autoeps = recipe.build_hooks(cfg, len(dataset), device="cpu", sync_checks=False)
    optimizer, _ = recipe.build_optimization(cfg, classifier)
    generator = torch.Generator()
    autoeps.set_epoch_length(len(recipe.train_loader(cfg, dataset, generator)))
    return cfg, dataset, classifier, criterion, autoeps, optimizer, generator


def steps_watched(loader, counter, ours, theirs):
    """Yield the loader's batches; record the syncs counted while the consumer (one training step) held each,
    split into those made by our code and those made inside auto_LiRPA."""
    for batch in loader:
        before = counter.counts.copy()
        yield batch
        new = counter.counts - before
        theirs.append(sum(n for (_, site), n in new.items() if in_auto_lirpa(site)))
        ours.append(sum(n for (_, site), n in new.items() if not in_auto_lirpa(site)))


@pytest.mark.parametrize("method", ["IBP", "CROWN-IBP", "SABR", "CC-IBP", "MTL-IBP"])
def test_training_steps_do_not_synchronise(method):
    cfg, dataset, classifier, criterion, autoeps, optimizer, generator = build(f"bound={method.lower().replace('-', '_')}")
    generator.manual_seed(1)
    train_epoch(classifier, recipe.train_loader(cfg, dataset, generator), criterion, autoeps, optimizer, cfg, 1, False)
    ours, theirs = [], []
    generator.manual_seed(2)
    with count_host_syncs(optimizer_step_counters(optimizer)) as counter:
        loader = steps_watched(recipe.train_loader(cfg, dataset, generator), counter, ours, theirs)
        train_epoch(classifier, loader, criterion, autoeps, optimizer, cfg, 2, False)
    assert len(ours) == 4
    assert ours == [0, 0, 0, 0], counter.counts
    if not auto_lirpa_checks_each_node_for_nan():
        assert theirs == [0, 0, 0, 0], counter.counts
    assert counter.total > 0  # the epoch's logging point reads its sums: the counter does see syncs


def test_the_counter_sees_each_kind_of_sync():
    x = torch.tensor([1.0, 0.0])
    with count_host_syncs() as counter:
        x.sum().item(), bool(x[0]), x.tolist(), x.nonzero()
    assert counter.total == 4


def test_bad_bounds_in_a_step_are_reported_at_the_epoch_end_naming_it(monkeypatch):
    cfg, dataset, classifier, criterion, autoeps, optimizer, generator = build()
    certify = classifier.certify

    def poisoned(*args, **kwargs):
        logits, lb = certify(*args, **kwargs)
        return logits, lb + torch.where(torch.arange(len(lb)) == 1, float("nan"), 0.0).unsqueeze(1)

    monkeypatch.setattr(classifier, "certify", poisoned)
    generator.manual_seed(1)
    before = autoeps.offsets.clone()
    with pytest.raises(ValueError, match=r"epoch 7: lb had NaN or inf in [0-9]+ value\(s\)"):
        train_epoch(classifier, recipe.train_loader(cfg, dataset, generator), criterion, autoeps, optimizer, cfg, 7,
                    False)
    # Each batch held a NaN margin (the NaN also reached the weights): Algorithm 1 wrote nothing, as before.
    assert torch.equal(autoeps.offsets, before)
