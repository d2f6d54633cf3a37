# Makes conf/ the package lirpa_reweight.conf (see setup.cfg), so Hydra finds the configs after install.
# Loading the configs imports this module, so the resolvers config.yaml uses exist wherever it is composed.
from omegaconf import OmegaConf

from lirpa_reweight.rundir import default_run_name, run_dirname

if not OmegaConf.has_resolver("run_dirname"):  # a run directory name from the overrides
    OmegaConf.register_new_resolver("run_dirname", run_dirname)
if not OmegaConf.has_resolver("default_run_name"):
    OmegaConf.register_new_resolver("default_run_name", default_run_name)
if not OmegaConf.has_resolver("sweep_dirname"):  # a named sweep's directory, else the launch time
    OmegaConf.register_new_resolver("sweep_dirname", lambda name, timestamp: timestamp if name is None else str(name))
# ${mul:a,b} = a * b, e.g. the Optuna presets' maxoff range [0, eps_train / 2] from each recipe's eps_train.
if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))
