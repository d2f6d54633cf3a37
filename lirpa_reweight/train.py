"""Certified training with the two hooks: ``python -m lirpa_reweight.train [+experiment=NAME] [key=value ...]``
(or ``lirpa-train``). The Hydra entry point; the run itself is :func:`lirpa_reweight.training.run.train`."""
from __future__ import annotations

import logging
import math

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import ExpectedFailure, report_expected_failure
from .training.run import train

log = logging.getLogger(__name__)


def _hydra_record(cfg: DictConfig) -> dict:
    """What Hydra writes to .hydra/ (conf/config.yaml turns that off so that train() writes it after its checks)."""
    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))  # a writable copy
    hydra_cfg.hydra.output_subdir = ".hydra"  # where it is now, as Hydra would have recorded it
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg), ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


def objective_values(objectives, result: dict):
    """What a sweeper receives: one float for one objective, else a list (Optuna's multi-objective study);
    NaN for a value the run did not produce (stopped before its final evaluation, or PGD off)."""
    values = [float(v) if isinstance(v := result.get(name), (int, float)) else math.nan for name in objectives]
    return values[0] if len(values) == 1 else values


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="config")
def main(cfg: DictConfig):
    """Train; return the final errors named by ``objectives`` (default: verified error) so that sweepers (Optuna)
    can minimise them. An expected failure (bad config, missing data, refused resume, ...) ends in its message."""
    try:
        with logging_redirect_tqdm():  # on a terminal, log lines print above the bars, not into them
            result = train(cfg, hydra_files=_hydra_record(cfg))
    except ExpectedFailure as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep records the job as failed and goes on
            log.error("%s", error)
            raise
        report_expected_failure(error, log)
    except Exception:
        log.exception("training failed")  # the traceback goes to train.log too, not only to the terminal
        raise
    return objective_values(cfg.objectives, result)


if __name__ == "__main__":
    main()
