"""Silence two known, harmless messages that importing auto_LiRPA makes on every command, and nothing else.

- torch's ``FutureWarning: `torch.jit.script` is deprecated``, raised by auto_LiRPA 0.3's ``@torch.jit.script``
  decorators at import (our code scripts nothing);
- ``No CUDA runtime is found, using CUDA_HOME=...``, logged by ``torch.utils.cpp_extension`` when auto_LiRPA
  imports it on a machine without a GPU (we build no CUDA extension).

Installed by ``import lirpa_reweight``, before anything of ours imports auto_LiRPA. auto_LiRPA's import calls
``warnings.simplefilter("once")``, which goes in front of any filter of ours, so the import itself also runs
under :func:`quiet_import`.
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings

JIT_SCRIPT_DEPRECATED = r"`torch\.jit\.script` is deprecated"
NO_CUDA_RUNTIME = "No CUDA runtime is found"
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NO_CUDA_RUNTIME)


def install() -> None:
    """Add the two filters once (calling again adds nothing)."""
    warnings.filterwarnings("ignore", message=JIT_SCRIPT_DEPRECATED, category=FutureWarning)
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    if not any(isinstance(f, _DropNoCudaRuntime) for f in logger.filters):
        logger.addFilter(_DropNoCudaRuntime())


@contextlib.contextmanager
def quiet_import():
    """Drop the ``torch.jit.script`` deprecation warning while this block runs, whatever the filters say."""
    original = warnings.showwarning

    def showwarning(message, category, *args, **kwargs):
        if issubclass(category, FutureWarning) and re.match(JIT_SCRIPT_DEPRECATED, str(message)):
            return
        original(message, category, *args, **kwargs)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = original
