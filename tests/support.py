"""What several test modules share: tiny configs, composing them, and running the commands in a subprocess.

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest does, for a conftest without ``__init__.py``), so
test modules in ``unit/``, ``integration/`` and ``scripts/`` import it as ``support``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

#: A training run of a few seconds: synthetic 12x12 data, 2 epochs, both hooks on.
TINY = [
    "data=synthetic", "data.in_shape=[1,12,12]", "data.num_train=192", "data.num_test=64",
    "trainer.batch_size=64", "trainer.val_examples=64", "trainer.progress=false", "trainer.epochs=2",
    "schedule.eps_train=0.05", "schedule.eps_eval=0.03", "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'",
    "eval.methods=[IBP,CROWN-IBP]", "eval.pgd_steps=3", "reweight=on", "autoeps=on",
]
#: Smaller still, on the CPU, for runs under torchrun (ranks share the machine's cores).
TINY_DDP = ["data=synthetic", "data.in_shape=[1,8,8]", "data.num_train=40", "data.num_test=20",
            "trainer.batch_size=16", "trainer.val_examples=20", "trainer.progress=false", "trainer.epochs=2",
            "trainer.device=cpu", "schedule.eps_train=0.05", "schedule.eps_eval=0.03",
            "schedule.eps_scheduler.opt_str='start=1,length=2,mid=0.4'", "eval.methods=[IBP]", "eval.pgd_steps=2",
            "reweight=on", "autoeps=on"]


def compose_config(overrides=(), config_name: str = "config", hydra: bool = False, run_dir=None,
                   resolve: bool = False):
    """The composed config of ``python -m lirpa_reweight.train`` (``config_name="evaluate"``: of ``evaluate``)
    with ``overrides``. ``hydra``: keep Hydra's own node; ``run_dir``: set it (it interpolates Hydra's output
    directory, which exists only inside a Hydra run); ``resolve``: resolve every interpolation."""
    with initialize_config_module(config_module="lirpa_reweight.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)
    if run_dir is not None:
        cfg.run_dir = str(run_dir)
    if resolve:
        if hydra:
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        OmegaConf.resolve(cfg)
    return cfg


def tiny_cfg(run_dir, *extra):
    """The TINY training config with its run directory."""
    return compose_config([*TINY, *extra], run_dir=run_dir)


def run_cli(args, cwd, timeout=600, env=None, check=True):
    """``python -m ARGS`` in ``cwd``; with ``check`` the command must succeed."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, cwd, ranks):
    """Train with ``args`` on ``ranks`` CPU processes (torchrun for more than one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={free_port()}", "-m", "lirpa_reweight.train", *args]
    else:
        cmd = [sys.executable, "-m", "lirpa_reweight.train", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def metrics(run_dir):
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def lock_holder(run_dir) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock for a minute; it prints "held" once it has it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from lirpa_reweight.training.rundir import RunLock; "
         f"RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder
