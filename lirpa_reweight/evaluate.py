"""Evaluate a saved run: ``python -m lirpa_reweight.evaluate checkpoint=PATH [eps=0.3] [methods=[IBP,CROWN-IBP]]``
(or ``lirpa-evaluate``): clean, PGD and verified error on its data set's test split, printed as JSON."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from .errors import ExpectedFailure, report_expected_failure
from .evaluation.examples_log import ExamplesLog, model_fingerprint
from .evaluation.plan import check_options, make_plan, options_from_config
from .evaluation.robustness import evaluate_classifier
from .evaluation.summary import format_summary
from .training import config_table
from .training.build import LoaderSpec, config_key, load_saved_run, test_loader

log = logging.getLogger(__name__)


def check_config(config: dict) -> None:
    """Refuse a bad value of ``evaluate``'s config (a plain dict), naming its key, before the checkpoint is read."""
    config_table.check_evaluate_config(config)
    with config_key(""):
        check_options(config["methods"], config["alpha_crown_iterations"])
        options_from_config(config)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the checkpoint ``cfg.checkpoint`` (``last.pt``/``best.pt``) as ``cfg`` says; returns the result."""
    config = config_table.as_container(cfg)
    check_config(config)
    saved = load_saved_run(config["checkpoint"], device=config["device"])
    eps = float(saved.eps_eval if config["eps"] is None else config["eps"])
    data = saved.data if config["data_root"] is None else \
        type(saved.data)(**{**saved.data.__dict__, "root": config["data_root"]})
    loader = test_loader(data, LoaderSpec(config["batch_size"], config["batch_size"], None, None),
                         saved.classifier.device, num_examples=config["num_test"])
    with config_key(""):
        attack, abcrown = options_from_config(config)
        examples_log = _examples_log(config, saved.classifier, eps, attack, abcrown)
    result = evaluate_classifier(saved.classifier, loader, eps, methods=list(config["methods"]),
                                 crown_max_relu_units=config["crown_max_relu_units"],
                                 alpha_crown_iterations=config["alpha_crown_iterations"],
                                 crown_limit_key="crown_max_relu_units", attack=attack, abcrown=abcrown,
                                 examples_log=examples_log)
    result["checkpoint"] = str(Path(config["checkpoint"]).resolve())
    return result


def _examples_log(config: dict, classifier, eps: float, attack, abcrown) -> Optional[ExamplesLog]:
    """The per-example log the user named (``examples_log``), resumed if it was written for this checkpoint, eps
    and cascade (another one is refused, naming the key)."""
    if config["examples_log"] is None:
        return None
    plan = make_plan(config["methods"], attack, abcrown, config["crown_max_relu_units"],
                     config["alpha_crown_iterations"])
    header = {"model": model_fingerprint(classifier.model), "eps": eps, "plan": plan.fingerprint()}
    return ExamplesLog(config["examples_log"], header)


@hydra.main(version_base="1.3", config_path="pkg://lirpa_reweight.conf", config_name="evaluate")
def main(cfg: DictConfig) -> Optional[float]:
    try:
        result = evaluate(cfg)
    except ExpectedFailure as error:
        report_expected_failure(error, log)
    print(json.dumps(result, indent=2))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    print(format_summary(result), file=sys.stderr)
    if result["verified_error"] is None:
        log.error("%s", result["verified_error_reason"])
        sys.exit(1)  # nothing asked for could run: a script must not read the JSON as a result
    return result["verified_error"]


if __name__ == "__main__":
    main()
