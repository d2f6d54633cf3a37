"""A quiet, fast start: no known third-party noise, and summarize/plot import neither torch nor auto_LiRPA."""
import logging
import os
import subprocess
import sys
import time

from lirpa_reweight._compat import quiet

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_HOME": "/usr/local"}  # CUDA_HOME set: torch would log


def python(code, timeout=300):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_summarize_and_plot_import_neither_torch_nor_auto_lirpa():
    out = python("import sys, lirpa_reweight.summarize, lirpa_reweight.plot, lirpa_reweight;"
                 "print(sorted(m for m in ('torch', 'auto_LiRPA') if m in sys.modules))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_summarize_help_takes_under_a_second():
    seconds = []
    for _ in range(3):  # best of three: the machine may be busy
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "lirpa_reweight.summarize", "--help"], capture_output=True,
                             text=True, timeout=60, env=ENV)
        seconds.append(time.perf_counter() - started)
        assert out.returncode == 0 and "usage" in out.stdout and not out.stderr, out.stderr
    assert min(seconds) < 1.0, seconds


def test_importing_auto_lirpa_after_the_package_is_patched_and_silent():
    out = python("import lirpa_reweight, auto_LiRPA; from lirpa_reweight._compat import patches as compat;"
                 "from auto_LiRPA import BoundedModule; print(len(compat.APPLIED));"
                 "import lirpa_reweight.core.bounds, lirpa_reweight.train")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jit.script" not in out.stderr and "No CUDA runtime" not in out.stderr, out.stderr
    from lirpa_reweight._compat import patches as compat

    compat.apply()
    assert int(out.stdout.split()[-1]) == len(compat.APPLIED)  # the same patches as in this (pytest) process


def test_only_the_known_messages_are_dropped(capsys):
    out = python("import warnings, lirpa_reweight.core.bounds; warnings.warn('something else', FutureWarning)")
    assert "something else" in out.stderr
    record = logging.LogRecord("torch.utils.cpp_extension", logging.WARNING, __file__, 1, "No CUDA runtime is "
                               "found, using CUDA_HOME='%s'", ("/usr/local",), None)
    other = logging.LogRecord("torch.utils.cpp_extension", logging.WARNING, __file__, 1, "Error building %s",
                              ("ext",), None)
    logger = logging.getLogger(quiet.CPP_EXTENSION_LOGGER)
    assert not logger.filter(record) and logger.filter(other)


def test_building_a_batchnorm1d_model_prints_nothing_and_keeps_train_mode(capsys):
    import torch

    from lirpa_reweight.core.bounds import BoundedClassifier
    from lirpa_reweight.models import build_model

    model = build_model("cnn_4layer_bn").train()
    classifier = BoundedClassifier(model, torch.zeros(2, 1, 28, 28), device="cpu")
    assert capsys.readouterr().out == ""
    assert classifier.training and model.training
    with quiet.drop_printed():  # any other line printed in the block still gets through, in order
        print("first")
        print(quiet.BATCHNORM1D_TRACING[0])
        print(quiet.BATCHNORM1D_TRACING[1])
        print("Set model to train() mode!")
    assert capsys.readouterr().out == "first\nSet model to train() mode!\n"
