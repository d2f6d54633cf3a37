"""Fixtures every test folder shares (``unit/``: one module at a time; ``integration/``: training runs and the
commands; ``scripts/``: the examples, benchmarks, reproduce scripts and packaging)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import support` from every folder, whatever pytest's rootdir
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # `import hostsync`, the benchmark's sync counter

import support  # noqa: E402

import lirpa_reweight  # noqa: E402,F401  (first: it arranges the auto_LiRPA patches)


@pytest.fixture
def compose():
    """``compose(overrides, config_name="config", hydra=False, run_dir=None, resolve=False)``: a composed config of
    the training (or ``"evaluate"``) command (see :func:`support.compose_config`)."""
    return support.compose_config


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(run_dir, *overrides)``: the tiny synthetic training config (:data:`support.TINY`)."""
    return support.tiny_cfg
