"""How lirpa_reweight makes auto_LiRPA (PyPI 0.3, or upstream 0.7.x) run on current PyTorch: one path.

auto_LiRPA parses models through private helpers of torch's TorchScript ONNX exporter, several of which moved or
vanished in torch 2.x, and 0.3 has a few bugs of its own on torch 2. :mod:`.patches` holds each fix, chosen by
feature detection (never by version string). They must be in place before auto_LiRPA's modules first run, yet
``import lirpa_reweight`` must stay cheap (``summarize`` and ``plot`` need neither torch nor auto_LiRPA). So
:func:`install`, run by ``import lirpa_reweight``, puts an import hook (:mod:`.hook`) on ``sys.meta_path``: the
first ``import auto_LiRPA`` anywhere, ours or a user's, patches torch, imports auto_LiRPA, then patches its
classes. Every module of ours imports auto_LiRPA plainly; nothing else patches it. :mod:`.quiet` silences three
known, harmless messages of auto_LiRPA (and nothing else).

``python -c "import lirpa_reweight._compat.patches as p; print(p.apply())"`` lists the patches this machine needs.
"""
from __future__ import annotations

from . import hook, quiet


def install() -> None:
    """Silence the known messages and arrange for the patches to go in when auto_LiRPA is first imported."""
    quiet.install()
    hook.install()
