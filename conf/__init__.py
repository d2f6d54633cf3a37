# Makes conf/ the package lirpa_reweight.conf (see setup.cfg), so Hydra finds the configs after install.
# Loading the configs imports this module, so the resolvers config.yaml uses exist wherever it is composed.
from omegaconf import OmegaConf

from lirpa_reweight.training.keys import default_run_name, run_dirname, run_dirname_excludes

_RESOLVERS = {
    "run_dirname": run_dirname,  # a run directory name from the overrides
    "run_dirname_excludes": run_dirname_excludes,  # the overrides that stay out of it (training/keys.py)
    "default_run_name": default_run_name,
    "sweep_dirname": lambda name, timestamp: timestamp if name is None else str(name),  # a named sweep, else the time
    # ${mul:a,b} = a * b, e.g. the Optuna presets' maxoff range [0, eps_train / 2] from each recipe's eps_train.
    "mul": lambda a, b: float(a) * float(b),
}
for _name, _resolver in _RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
