"""The import hook that patches auto_LiRPA the moment it is first imported, by any code (see the package docstring).

On the first ``import auto_LiRPA`` the hook takes itself off ``sys.meta_path``, patches torch, imports auto_LiRPA
for real (under :func:`.quiet.quiet_import`), patches its classes, and hands the import system that module.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

from . import quiet

TARGET = "auto_LiRPA"


class _PatchFirst(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        uninstall()  # from here on auto_LiRPA imports the ordinary way
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        # The import system has put ``module`` in sys.modules as a placeholder; the real, patched auto_LiRPA
        # replaces it there, and the import system returns whatever sys.modules then holds.
        from . import patches

        del sys.modules[TARGET]
        with quiet.quiet_import():
            patches.patch_torch()
            importlib.import_module(TARGET)
            patches.patch_auto_lirpa()


def install() -> None:
    if TARGET in sys.modules:  # imported already (before lirpa_reweight): patch what can still be patched
        importlib.import_module(f"{__package__}.patches").apply()
    elif not any(isinstance(finder, _PatchFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchFirst())


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _PatchFirst)]
