"""The keys that change nothing trained are one list, and every place that needs them reads that list."""
from support import compose_config

from lirpa_reweight.reports.runs import is_training_key
from lirpa_reweight.training.keys import HYDRA_SELECTORS, RUN_ONLY_KEYS, run_dirname_excludes
from lirpa_reweight.training.run_state import config_differences


def test_run_directory_names_leave_out_exactly_the_run_only_keys_the_seed_and_the_selectors():
    cfg = compose_config(["trainer.checkpoint_every=2", "trainer.device=cpu", "reweight=on"], hydra=True)
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == ["seed", *HYDRA_SELECTORS, *RUN_ONLY_KEYS]
    # trainer.checkpoint_every was once missing from the YAML copy: it no longer names another directory.
    assert cfg.hydra.job.override_dirname == "reweight=on"


def test_summaries_and_resume_read_the_same_list():
    assert not any(is_training_key(key) for key in [*RUN_ONLY_KEYS, "seed", "hydra.launcher"])
    assert is_training_key("reweight.gamma") and is_training_key("experiment")
    def config(value):
        tree = {}
        for key in RUN_ONLY_KEYS:
            group, _, leaf = key.partition(".")
            if leaf:
                tree.setdefault(group, {})[leaf] = value
            else:
                tree[group] = value
        return tree

    assert config_differences(config("old"), config("new")) == []  # a resume may change every run-only key
    assert config_differences({"reweight": {"gamma": 5}}, {"reweight": {"gamma": 1}}) != []
    assert "trainer.epochs" not in run_dirname_excludes()  # more epochs: another setting, but a resume may extend
