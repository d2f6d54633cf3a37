# Makes conf/ the package lirpa_reweight.conf (see setup.cfg), so Hydra finds the configs after install.
