"""Training runs from Hydra configs: the config's keys (:mod:`.keys`, :mod:`.config_table`), the builder that is the
only reader of a config (:mod:`.build`), the trainer that takes what it built (:mod:`.trainer`), and the run's
bookkeeping (run directory, checkpoints, resume, divergence, ranks). :mod:`.run` drives one run (docs/design.md).
"""
