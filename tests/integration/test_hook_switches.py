"""Off means off: a hook group switched off trains without the hook whatever its strength says, and names say so."""
import json

import torch
import yaml

from lirpa_reweight.training import build
from lirpa_reweight.reports.runs import run_setting
from lirpa_reweight.reports.table import summarize

from support import TINY, compose_config, run_cli


def hooks(*overrides):
    cfg = compose_config(["data=synthetic", "data.num_train=8", "trainer.batch_size=4", "run_dir=unused",
                          "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'", *overrides])
    state = build.build_run(build.read_config(cfg), torch.device("cpu")).state
    return state.criterion, state.autoeps


def test_off_with_a_strength_given_still_trains_without_the_hook():
    criterion, autoeps = hooks("reweight=off", "reweight.gamma=5", "autoeps=off", "autoeps.maxoff=0.05")
    assert criterion.gamma == 0.0 and autoeps.maxoff == 0.0
    criterion, autoeps = hooks("reweight=on", "reweight.gamma=1", "autoeps=on", "autoeps.maxoff=0.05")
    assert criterion.gamma == 1.0 and autoeps.maxoff == 0.05
    # The switch alone turns a group on or off; a preset's strength stays for when it is on.
    criterion, autoeps = hooks("+experiment=mnist_ibp", "reweight.enabled=false", "autoeps.enabled=false")
    assert criterion.gamma == 0.0 and autoeps.maxoff == 0.0
    criterion, autoeps = hooks("+experiment=cifar_ibp", "data=synthetic", "autoeps=off")
    assert autoeps.maxoff == 0.0  # the CIFAR preset's maxoff 0.01 no longer leaks into its baseline
    criterion, autoeps = hooks("+experiment=cifar_ibp", "data=synthetic", "autoeps=on")
    assert autoeps.maxoff == 0.01


def make_run(path, overrides, config):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_summarize_labels_say_what_ran(tmp_path):
    now = make_run(tmp_path / "a", ["autoeps=off", "autoeps.maxoff=0.05", "seed=0"],
                   {"seed": 0, "autoeps": {"enabled": False, "maxoff": 0.05}})
    assert run_setting(now)[0] == {"autoeps": "off", "autoeps.maxoff": "unused (off)"}
    # A run from before the switch trained with auto eps whenever maxoff > 0, whatever the group was called.
    old = make_run(tmp_path / "b", ["autoeps=off", "autoeps.maxoff=0.05", "reweight=on", "reweight.gamma=0"],
                   {"autoeps": {"maxoff": 0.05}, "reweight": {"gamma": 0.0, "alpha": 0.1}})
    assert run_setting(old)[0] == {"autoeps": "on", "autoeps.maxoff": "0.05", "reweight": "off",
                                   "reweight.gamma": "unused (off)"}
    switch = make_run(tmp_path / "c", ["+experiment=mnist_ibp", "reweight.enabled=false", "reweight.gamma=1"],
                      {"reweight": {"enabled": False, "gamma": 1.0}})
    assert run_setting(switch)[0] == {"experiment": "mnist_ibp", "reweight": "off", "reweight.gamma": "unused (off)"}


def test_sweep_off_and_on_with_one_maxoff_compares_off_with_on(tmp_path):
    sweep_dir = tmp_path / "sweep"
    tiny = [item for item in TINY if item != "autoeps=on"] + ["trainer.epochs=1", "eval.methods=[IBP]",
                                                            "eval.pgd_steps=0"]
    run_cli(["lirpa_reweight.train", "-m", *tiny, "autoeps=off,on", "autoeps.maxoff=0.05",
             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    rows, incomplete = summarize(sweep_dir)
    assert not incomplete
    offsets = {}
    for row in rows:
        (run_dir,) = row.run_dirs
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        offsets[row.setting["autoeps"], row.setting["autoeps.maxoff"]] = metrics[-1]["autoeps_mean_offset"]
    assert set(offsets) == {("off", "unused (off)"), ("on", "0.05")}
    assert offsets["off", "unused (off)"] == 0.0
    assert offsets["on", "0.05"] > 0.0  # some training margins are negative at the first epoch's eps
