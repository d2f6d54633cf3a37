"""The auto_LiRPA compatibility layer: targets exist, re-applying changes nothing, and it is applied on import."""
import importlib
import inspect
import subprocess
import sys

import pytest
import torch

import lirpa_reweight
from lirpa_reweight._compat import patches as compat


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
    compat.apply()
    assert compat.APPLIED == before
    assert BoundedModule._named_members is members and BoundAveragePool.bound_backward is pool


def test_each_torch_patch_target_resolves_on_this_torch():
    import torch.onnx.symbolic_helper as helper
    import torch.onnx.utils as onnx_utils

    targets = compat.torch_patch_targets()
    assert set(targets) == {"torch.onnx.utils._optimize_graph", "torch.onnx.symbolic_helper._set_opset_version",
                            "torch.onnx.symbolic_helper._node_get"}
    attribute = {"torch.onnx.utils._optimize_graph": "_optimize_graph",
                 "torch.onnx.symbolic_helper._set_opset_version": "GLOBALS",
                 "torch.onnx.symbolic_helper._node_get": "_node_get"}
    for patch, module in targets.items():
        # a patch is installed exactly where torch lacks the name, and then its target is a real module
        assert (patch in compat.APPLIED) == (module is not None), (patch, module, compat.APPLIED)
        if module is not None:
            assert getattr(importlib.import_module(module), attribute[patch]) is not None
    # whatever torch this is, the names auto_LiRPA imports exist once the patches are in
    assert callable(onnx_utils._optimize_graph) and callable(helper._set_opset_version) and callable(helper._node_get)


def test_a_patch_whose_target_is_nowhere_fails_naming_it_and_the_places_searched():
    with pytest.raises(ImportError) as raised:
        compat.find_target("torch.onnx.symbolic_helper._set_opset_version", "GLOBALS",
                           homes=("torch.onnx._no_such_module", "torch.nn.functional"))
    message = str(raised.value)
    assert isinstance(raised.value, compat.PatchTargetError)
    assert "torch.onnx.symbolic_helper._set_opset_version" in message
    assert "torch.onnx._no_such_module (no such module)" in message
    assert "torch.nn.functional (has no GLOBALS)" in message


def test_a_needed_patch_without_target_fails_at_import_not_at_the_first_bound():
    # Simulate a torch that dropped _set_opset_version and moved GLOBALS somewhere we do not search.
    code = (
        "import importlib, torch, torch.onnx.symbolic_helper as h\n"
        "h.__dict__.pop('_set_opset_version', None)\n"
        "for name in ('torch.onnx._internal.torchscript_exporter._globals', 'torch.onnx._globals'):\n"
        "    try: importlib.import_module(name).__dict__.pop('GLOBALS', None)\n"
        "    except ImportError: pass\n"
        "import lirpa_reweight\n"
        "import auto_LiRPA\n"  # the patches go in when auto_LiRPA is first imported (lirpa_reweight loads lazily)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("lirpa_reweight._compat.patches.PatchTargetError:"), out.stderr[-2000:]
    assert "torch.onnx.symbolic_helper._set_opset_version" in last and "torch.onnx._globals" in last


def test_set_opset_version_reaches_the_exporter_globals():
    import torch.onnx.symbolic_helper as helper

    if "torch.onnx.symbolic_helper._set_opset_version" not in compat.APPLIED:
        pytest.skip("this torch has its own symbolic_helper._set_opset_version: nothing of ours to check")
    exporter_globals = compat.find_target("test", "GLOBALS")
    old = exporter_globals.GLOBALS.export_onnx_opset_version
    try:
        helper._set_opset_version(13)
        assert exporter_globals.GLOBALS.export_onnx_opset_version == 13
    finally:
        helper._set_opset_version(old)


def test_importing_twice_in_a_fresh_process_is_harmless():
    code = (
        "import importlib, lirpa_reweight, lirpa_reweight._compat.patches as c;"
        "first = c.apply(); importlib.reload(c); importlib.reload(lirpa_reweight);"
        "second = c.apply(); assert second == (), second; print(len(first))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == len(compat.APPLIED)


def test_apply_lists_the_patches_this_process_has():
    assert compat.apply() == tuple(compat.APPLIED) and compat.APPLIED
    assert all(isinstance(finder, type(finder)) for finder in sys.meta_path)
    assert not any(type(finder).__name__ == "_PatchFirst" for finder in sys.meta_path)  # spent once auto_LiRPA came


def test_numpy_2_gets_the_module_auto_lirpa_0_3_imports_exactly_when_it_lacks_it():
    import numpy

    compat.apply()
    assert ("numpy.lib.arraysetops" in compat.APPLIED) == (int(numpy.__version__.split(".")[0]) >= 2 and
                                                           not hasattr(numpy.lib.arraysetops, "__file__"))
    from numpy.lib.arraysetops import isin

    assert isin(numpy.array([1, 2, 3]), [2]).tolist() == [False, True, False]
