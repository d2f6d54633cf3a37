"""Silence known, harmless messages of auto_LiRPA, and nothing else: two that importing it makes on every command,
and one that building a bounded module prints for every model with BatchNorm1d.

- torch's ``FutureWarning: `torch.jit.script` is deprecated``, raised by auto_LiRPA 0.3's ``@torch.jit.script``
  decorators at import (our code scripts nothing);
- ``No CUDA runtime is found, using CUDA_HOME=...``, logged by ``torch.utils.cpp_extension`` when auto_LiRPA
  imports it on a machine without a GPU (we build no CUDA extension).

- ``BatchNorm1d may raise error during conversion ... Set model to eval() mode!``, printed (two lines) while
  auto_LiRPA traces a model with BatchNorm1d in train mode: it traces in eval mode, and BoundedClassifier puts
  the train/eval mode back afterwards (:func:`drop_printed`).

Installed by ``import lirpa_reweight``, before anything of ours imports auto_LiRPA. auto_LiRPA's import calls
``warnings.simplefilter("once")``, which goes in front of any filter of ours, so the import itself also runs
under :func:`quiet_import`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings

JIT_SCRIPT_DEPRECATED = r"`torch\.jit\.script` is deprecated"
NO_CUDA_RUNTIME = "No CUDA runtime is found"
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
BATCHNORM1D_TRACING = ("BatchNorm1d may raise error during conversion when the model is in train() mode!",
                       "Set model to eval() mode!")


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


@contextlib.contextmanager
def drop_printed(lines=BATCHNORM1D_TRACING):
    """Print what the block prints to stdout, less the exact ``lines`` (kept when an exception escapes)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except BaseException:
        sys.stdout.write(captured.getvalue())
        raise
    kept = [line for line in captured.getvalue().splitlines(keepends=True) if line.rstrip("\n") not in lines]
    sys.stdout.write("".join(kept))
