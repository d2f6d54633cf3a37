"""The auto_LiRPA compatibility layer: targets exist, re-applying changes nothing, and it is applied on import."""
import inspect
import subprocess
import sys

import torch

import lirpa_reweight
from lirpa_reweight import compat


def test_every_patch_target_exists_after_import():
    import torch.onnx.symbolic_helper as helper
    import torch.onnx.utils as onnx_utils
    from auto_LiRPA import BoundedModule

    assert callable(onnx_utils._optimize_graph)
    assert callable(helper._set_opset_version)
    assert callable(helper._node_get)
    assert hasattr(torch._C.Node, "__getitem__")
    # named_parameters() passes remove_duplicate on torch >= 2.0.
    params = inspect.signature(BoundedModule._named_members).parameters
    assert "remove_duplicate" in params or compat._is_ours(BoundedModule._named_members)


def test_reapplying_installs_nothing_new_and_keeps_the_patched_objects():
    from auto_LiRPA import BoundedModule
    from auto_LiRPA.operators import BoundAveragePool

    before = list(compat.APPLIED)
    members, pool = BoundedModule._named_members, BoundAveragePool.bound_backward
    compat.apply.cache_clear()
    compat.apply()
    assert compat.APPLIED == before
    assert BoundedModule._named_members is members and BoundAveragePool.bound_backward is pool


def test_set_opset_version_reaches_the_exporter_globals():
    import torch.onnx.symbolic_helper as helper

    exporter_globals = compat._torchscript_exporter_module("_globals")
    if exporter_globals is None:  # an older torch where the helper is torch's own
        return
    old = exporter_globals.GLOBALS.export_onnx_opset_version
    try:
        helper._set_opset_version(13)
        assert exporter_globals.GLOBALS.export_onnx_opset_version == 13
    finally:
        helper._set_opset_version(old)


def test_importing_twice_in_a_fresh_process_is_harmless():
    code = (
        "import importlib, lirpa_reweight, lirpa_reweight.compat as c;"
        "first = c.apply(); importlib.reload(c); importlib.reload(lirpa_reweight);"
        "second = c.apply(); assert second == (), second; print(len(first))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == len(compat.APPLIED)


def test_package_reexports_the_patched_api():
    assert lirpa_reweight.compat is compat
    assert compat.apply() == tuple(compat.APPLIED)
