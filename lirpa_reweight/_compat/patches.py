"""Let auto_LiRPA (PyPI 0.3, or upstream 0.7.x) run on current PyTorch.

auto_LiRPA parses models through private helpers of torch's TorchScript ONNX
exporter, several of which moved or vanished in torch 2.x. Every patch here is
chosen by feature detection (is the name missing? does the signature lack the
keyword?), never by comparing version strings, so on a torch/auto_LiRPA pair
where nothing is broken, :func:`apply` changes nothing. Applying it twice is
harmless: each patch first checks whether its target already works. Where torch
lacks a name and its replacement is in none of the places searched (:data:`HOMES`),
the import stops with a :class:`PatchTargetError` naming the patch and the places.

The torch-side patches (:func:`patch_torch`) must be in place before auto_LiRPA's modules first run (its
``parse_graph`` imports the helpers by name); the class patches (:func:`patch_auto_lirpa`) need auto_LiRPA
imported. ``import lirpa_reweight`` arranges both for the first import of auto_LiRPA (see the package's docstring).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types

import torch

#: Names of the patches that :func:`apply` actually installed in this process.
APPLIED: list[str] = []


def _is_ours(function) -> bool:
    """Our wrappers keep the original's signature and source (functools.wraps), so mark them explicitly."""
    return getattr(function, "__lirpa_reweight_patch__", False)


def _mark(function):
    function.__lirpa_reweight_patch__ = True
    return function


class PatchTargetError(ImportError):
    """A needed patch found its replacement nowhere: raised at import, not at the first bound."""


# Where each moved piece of torch's TorchScript exporter lives, newest home first. torch 2.9 moved the
# private helpers under torch.onnx._internal.torchscript_exporter; before that (2.0-2.8) GLOBALS sat in
# torch.onnx._globals and the helpers in torch.onnx.utils / torch.onnx.symbolic_helper themselves.
HOMES = {
    "GLOBALS": ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"),
    "_optimize_graph": ("torch.onnx._internal.torchscript_exporter.utils",),
    "_node_get": ("torch.onnx._internal.torchscript_exporter.symbolic_helper",),
}


def find_target(patch: str, attribute: str, homes=None):
    """The first module of ``homes`` (default ``HOMES[attribute]``) that has ``attribute``.

    Raises :class:`PatchTargetError` naming the patch and every module searched when none has it.
    """
    homes = HOMES[attribute] if homes is None else homes
    searched = []
    for name in homes:
        try:
            module = importlib.import_module(name)
        except ImportError:
            searched.append(f"{name} (no such module)")
            continue
        if hasattr(module, attribute):
            return module
        searched.append(f"{name} (has no {attribute})")
    raise PatchTargetError(
        f"lirpa_reweight._compat: patch {patch} needs torch's {attribute}, but it is in none of: "
        f"{'; '.join(searched)} (torch {torch.__version__}); this torch moved it again -- please report it"
    )


def torch_patch_targets() -> dict:
    """For each torch-side patch: the module its replacement comes from, or None where torch needs no patch.

    Resolves without installing anything; raises :class:`PatchTargetError` where a needed target is missing.
    """
    import torch.onnx.symbolic_helper as helper
    import torch.onnx.utils as onnx_utils

    def needed(owner, name):  # missing in torch, or already supplied by us
        return not hasattr(owner, name) or f"{owner.__name__}.{name}" in APPLIED

    targets = {}
    for patch, owner, name, attribute in (
        ("torch.onnx.utils._optimize_graph", onnx_utils, "_optimize_graph", "_optimize_graph"),
        ("torch.onnx.symbolic_helper._set_opset_version", helper, "_set_opset_version", "GLOBALS"),
        ("torch.onnx.symbolic_helper._node_get", helper, "_node_get", "_node_get"),
    ):
        targets[patch] = find_target(patch, attribute).__name__ if needed(owner, name) else None
    return targets


def _patch_optimize_graph() -> None:
    import torch.onnx.utils as onnx_utils

    if hasattr(onnx_utils, "_optimize_graph"):
        return
    # torch 2.9 moved _optimize_graph from torch.onnx.utils into torch.onnx._internal.torchscript_exporter.utils.
    patch = "torch.onnx.utils._optimize_graph"
    onnx_utils._optimize_graph = find_target(patch, "_optimize_graph")._optimize_graph
    APPLIED.append(patch)


def _patch_set_opset_version() -> None:
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    # Newer torch dropped symbolic_helper._set_opset_version; the opset lives on the exporter's GLOBALS
    # object, in torch.onnx._globals up to 2.8 and under torch.onnx._internal.torchscript_exporter from 2.9.
    patch = "torch.onnx.symbolic_helper._set_opset_version"
    globals_module = find_target(patch, "GLOBALS")

    def _set_opset_version(opset_version: int) -> None:
        globals_module.GLOBALS.export_onnx_opset_version = opset_version

    helper._set_opset_version = _mark(_set_opset_version)
    APPLIED.append(patch)


def _patch_node_get() -> None:
    import torch.onnx.symbolic_helper as helper

    if not hasattr(helper, "_node_get"):
        # torch 2.9's backward-compat symbolic_helper re-exports only public names; upstream auto_LiRPA 0.7 imports _node_get.
        patch = "torch.onnx.symbolic_helper._node_get"
        helper._node_get = find_target(patch, "_node_get")._node_get
        APPLIED.append(patch)
    if not hasattr(torch._C.Node, "__getitem__"):
        # torch 2.x removed Node.__getitem__ (node["value"]); auto_LiRPA 0.3 reads attributes that way.
        torch._C.Node.__getitem__ = helper._node_get
        APPLIED.append("torch._C.Node.__getitem__")


def _patch_named_members() -> None:
    from auto_LiRPA import BoundedModule

    original = BoundedModule._named_members
    if _is_ours(original) or "remove_duplicate" in inspect.signature(original).parameters:
        return

    # torch 2.0 added the remove_duplicate keyword to Module._named_members, which
    # named_parameters() now passes; auto_LiRPA 0.3 overrides the method without it.
    @functools.wraps(original)
    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    BoundedModule._named_members = _mark(_named_members)
    APPLIED.append("auto_LiRPA.BoundedModule._named_members")


def _patch_dropout_ratio() -> None:
    from auto_LiRPA.operators import BoundDropout

    if _is_ours(BoundDropout.__init__) or "ratio.device" not in inspect.getsource(BoundDropout.forward):
        return
    original = BoundDropout.__init__

    # Upstream 0.7 calls self.ratio.device, but torch 2.9+'s exporter hands a static ratio over as a Python float.
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if isinstance(self.ratio, float):
            self.ratio = torch.tensor(self.ratio)

    BoundDropout.__init__ = _mark(__init__)
    APPLIED.append("auto_LiRPA.operators.BoundDropout.ratio")


def _patch_average_pool_backward() -> None:
    from auto_LiRPA.operators import BoundAveragePool

    original = BoundAveragePool.bound_backward
    if _is_ours(original) or "last_A.view(" not in inspect.getsource(original):
        return

    # Full CROWN hands AveragePool an expanded (non-contiguous) identity spec, which torch 2.x refuses to .view().
    @functools.wraps(original)
    def bound_backward(self, last_lA, last_uA, *args, **kwargs):
        last_lA, last_uA = (a.contiguous() if isinstance(a, torch.Tensor) else a for a in (last_lA, last_uA))
        return original(self, last_lA, last_uA, *args, **kwargs)

    BoundAveragePool.bound_backward = _mark(bound_backward)
    APPLIED.append("auto_LiRPA.operators.BoundAveragePool.bound_backward")


def _clamp_blocks_boundary_gradient() -> bool:
    value = torch.tensor([0.0, 1.0], requires_grad=True)
    (grad,) = torch.autograd.grad(value.clamp(0.0, 1.0).sum(), value)
    return bool((grad == 0).all())


def _patch_relu_alpha_clamp() -> None:
    from auto_LiRPA.operators import BoundRelu

    original = BoundRelu.__dict__.get("_relu_mask_alpha")
    function = getattr(original, "__func__", original)
    if (function is None or _is_ours(function) or "torch.clamp(lb_lower_d, min=0., max=1.)" not in
            inspect.getsource(function) or not _clamp_blocks_boundary_gradient()):
        return

    # alpha-CROWN starts every slope at exactly 0 or 1 and clamps it to [0, 1]. Recent torch gives clamp a zero
    # gradient at the boundary, so no slope would ever move: clamp the value, pass the gradient (the optimiser
    # keeps the slopes inside [0, 1] anyway, where this is the gradient older torch gave).
    def clamp01(slope):
        return slope + (slope.clamp(0.0, 1.0) - slope).detach()

    @functools.wraps(function)
    def _relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d):
        lower_mask = (lower >= 0).to(lower.dtype)
        upper_mask = upper <= 0
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = clamp01(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = clamp01(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, upper_mask.all()

    BoundRelu._relu_mask_alpha = staticmethod(_mark(_relu_mask_alpha))
    APPLIED.append("auto_LiRPA.operators.BoundRelu._relu_mask_alpha")


def _patch_numpy_arraysetops() -> None:
    import numpy

    try:
        import numpy.lib.arraysetops  # noqa: F401
        return
    except ImportError:
        pass
    # numpy 2 made numpy.lib.arraysetops private; auto_LiRPA 0.3 imports isin from it (its only use of the module).
    module = types.ModuleType("numpy.lib.arraysetops")
    module.isin = numpy.isin
    sys.modules[module.__name__] = module
    numpy.lib.arraysetops = module
    APPLIED.append("numpy.lib.arraysetops")


def _gather_symbolic_at_opset_12():
    """The symbolic function torch's exporter would use for ``aten::gather`` at auto_LiRPA's opset 12, or None."""
    for name in ("torch.onnx._internal.torchscript_exporter.registration", "torch.onnx._internal.registration"):
        try:
            registration = importlib.import_module(name)
        except ImportError:
            continue
        group = registration.registry.get_function_group("aten::gather")
        return None if group is None else group.get(12)
    return None


def _patch_gather_symbolic() -> None:
    function = _gather_symbolic_at_opset_12()
    if function is None or _is_ours(function) or not function.__module__.endswith("symbolic_opset9"):
        return
    # auto_LiRPA sets opset 12 but never runs the exporter's own export, which is what imports (registers) the
    # opset 10-12 symbolics in torch 2.9+; torch.gather then falls back to opset 9's OneHot form, an op auto_LiRPA
    # cannot bound. Loss fusion's CrossEntropyWrapper gathers the true logit: give it GatherElements (opset 11's).
    # Only gather is registered, so every other op's graph stays as it was.
    def gather(g, self, dim, index, sparse_grad=False):
        import torch.onnx.symbolic_helper as helper

        return g.op("GatherElements", self, index, axis_i=helper._maybe_get_const(dim, "i"))

    torch.onnx.register_custom_op_symbolic("aten::gather", _mark(gather), 11)
    APPLIED.append("torch.onnx aten::gather at opset 11")


def patch_torch() -> None:
    """The patches of what auto_LiRPA imports from torch's exporter and from numpy; imports no auto_LiRPA."""
    _patch_optimize_graph()
    _patch_set_opset_version()
    _patch_node_get()
    _patch_numpy_arraysetops()
    _patch_gather_symbolic()


def patch_auto_lirpa() -> None:
    """The patches of auto_LiRPA's own classes (imports auto_LiRPA: call :func:`patch_torch` first)."""
    _patch_named_members()
    _patch_dropout_ratio()
    _patch_average_pool_backward()
    _patch_relu_alpha_clamp()


def apply() -> tuple[str, ...]:
    """Install every needed patch (each once; a second call adds nothing); return the names of those installed."""
    patch_torch()
    import auto_LiRPA  # noqa: F401  (through the import hook, if it is still waiting: it patches the same way)

    patch_auto_lirpa()
    return tuple(APPLIED)
