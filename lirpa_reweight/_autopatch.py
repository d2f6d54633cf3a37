"""Apply ``compat``'s patches at the moment auto_LiRPA is first imported, by any code.

``import lirpa_reweight`` must come "before auto_LiRPA" (the patches must exist before auto_LiRPA's modules
run), yet it must stay cheap: ``summarize`` and ``plot`` need neither torch nor auto_LiRPA. So the package
installs this import hook instead of importing them: the first ``import auto_LiRPA`` anywhere runs
``compat.apply()``, which patches torch, imports auto_LiRPA and patches its classes; that patched module is
what the import returns (imported under ``_quiet.quiet_import``).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

from . import _quiet

TARGET = "auto_LiRPA"


def _inside_compat_apply() -> bool:
    """True when ``compat.apply()`` itself is importing auto_LiRPA (then the plain import must go ahead)."""
    compat = sys.modules.get(f"{__package__}.compat")
    code = getattr(getattr(getattr(compat, "apply", None), "__wrapped__", None), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


class _PatchFirst(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        uninstall()
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        # The import system has put ``module`` in sys.modules as a placeholder; the real, patched auto_LiRPA
        # replaces it there, and the import system returns whatever sys.modules then holds.
        del sys.modules[TARGET]
        with _quiet.quiet_import():
            if not _inside_compat_apply():  # else compat.apply() is importing auto_LiRPA, patches in place
                importlib.import_module(f"{__package__}.compat").apply()
            importlib.import_module(TARGET)


def install() -> None:
    if TARGET in sys.modules:  # imported already: patch what we can now
        importlib.import_module(f"{__package__}.compat").apply()
    elif not any(isinstance(finder, _PatchFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchFirst())


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _PatchFirst)]
