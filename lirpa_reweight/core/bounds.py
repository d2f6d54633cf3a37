"""Certified lower bounds of classification margins, through auto_LiRPA.

:class:`BoundedClassifier` wraps a model in ``auto_LiRPA.BoundedModule`` and
returns, for a batch and a (per-example) L-inf radius, lower bounds of
``z_y - z_j`` for every ``j != y``: the C-matrix form that auto_LiRPA's
certified-training examples use (:mod:`.margins` turns them into the paper's eq. 2 and eq. 6).
"""
from __future__ import annotations

import importlib
import warnings
from contextlib import nullcontext
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

from .._compat.quiet import drop_printed
from ..errors import ArgumentError
from .bound_methods import BOUND_METHODS
from .clean_pass import CLEAN_PASSES, clean_pass_detachable
from .deferred import DeferredChecks
from .device import resolve_device
from .margins import margin_spec

Eps = Union[float, torch.Tensor]


class FusedBatch(NamedTuple):
    """What one loss-fusion bound computation gives: clean logits and per-example robust CE upper bounds."""

    logits: torch.Tensor  # (B, C)
    robust_losses: torch.Tensor  # (B,) u_i >= CE(z(x'), y) for every x' in the example's ball


class CertifiedBatch(NamedTuple):
    """What one bound computation gives: clean logits of the centre and margin lower bounds."""

    logits: torch.Tensor  # (B, C)
    margin_lb: torch.Tensor  # (B, C-1)


def _as_channel_stats(values: Optional[Sequence[float]], name: str) -> Optional[torch.Tensor]:
    if values is None:
        return None
    stats = torch.as_tensor(values, dtype=torch.get_default_dtype()).flatten()
    if name == "std" and (stats <= 0).any():
        raise ValueError(f"std must be positive in every channel, got {stats.tolist()}")
    return stats


class BoundedClassifier(nn.Module):
    """A classifier wrapped in auto_LiRPA's ``BoundedModule``, with input normalisation kept outside.

    Args:
        model: the classifier; it receives *normalised* input.
        example_input: one batch in pixel units (un-normalised), used to trace the graph.
        device: where bounds are computed; None picks CUDA when available.
        mean: per-channel mean of the data set. Normalisation is applied
            to ``x``, ``x_L`` and ``x_U`` here rather than inside the bounded graph,
            because a normalisation layer in the graph breaks CROWN-IBP in auto_LiRPA 0.3.
        std: per-channel standard deviation of the data set (with ``mean``).
        data_range: the valid pixel range; perturbed inputs are clamped to it.
        bound_opts: passed to ``BoundedModule`` unchanged.
        loss_fusion: also build auto_LiRPA's loss-fusion graph (its ``CrossEntropyWrapper`` around the model,
            bound option ``loss_fusion``), which bounds the cross-entropy itself: :meth:`certify_fused`. It shares
            the model's parameters; :meth:`certify` and the clean forward keep using the plain graph.
        sync_checks: True raises on a bad eps or label at once (each check makes the host wait for the
            device); False counts them on the device and raises from :meth:`check` (labels out of range
            are clamped for the bound computation meanwhile, so that no device-side assert fires).

    ``eps`` is always in pixel units. The wrapper follows ``train()``/``eval()`` like
    any module; train-mode BatchNorm bounds use the statistics of the current batch.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        device: Union[str, torch.device, None] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        data_range: tuple[float, float] = (0.0, 1.0),
        bound_opts: Optional[dict] = None,
        sync_checks: bool = True,
        loss_fusion: bool = False,
    ):
        super().__init__()
        self.sync_checks = bool(sync_checks)
        self.deferred = DeferredChecks({"eps": "eps was negative or not finite",
                                        "labels": "labels were outside [0, num_classes)"})
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        low, high = (float(v) for v in data_range)
        if not low < high:
            raise ValueError(f"data_range must be (low, high) with low < high, got {tuple(data_range)}")
        self.device = resolve_device(device)
        self.data_range = (low, high)
        self.example_shape = tuple(example_input.shape[1:])
        self._clean_pass_detachable: Optional[bool] = None  # probed on first need (core/clean_pass.py)
        self.register_buffer("mean", _as_channel_stats(mean, "mean"))
        self.register_buffer("std", _as_channel_stats(std, "std"))
        self.to(self.device)
        self.__dict__["model"] = model

        was_training = model.training
        model.to(self.device)
        example = self.normalize(example_input.to(self.device))
        with warnings.catch_warnings(), drop_printed():
            # Tracing through torch's ONNX exporter warns about every data-dependent branch; auto_LiRPA prints
            # that it traces BatchNorm1d models in eval mode (the mode is put back below).
            warnings.simplefilter("ignore")
            self.bounded = BoundedModule(model, example, device=self.device, bound_opts=bound_opts)
            # Kept out of the module tree like the model: it holds the same Parameter objects, and checkpoints
            # must not change with the option.
            self.__dict__["fused"] = fused_graph(model, example, self.device, bound_opts) if loss_fusion else None
        # The bounded module holds the model's own Parameter objects; keep the model out of
        # the module tree so that parameters and state_dict do not list them twice.
        self.__dict__["model"] = model
        # Building a BoundedModule can switch the model between train and eval mode.
        self.train(was_training)

    def train(self, mode: bool = True) -> "BoundedClassifier":
        super().train(mode)
        self.model.train(mode)
        if self.fused is not None:
            self.fused.train(mode)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clean logits for pixel-space input ``x``."""
        return self.bounded(self.normalize(x.to(self.device)))

    def input_box(self, x: torch.Tensor, eps: Eps) -> tuple[torch.Tensor, torch.Tensor]:
        """The L-inf ball of radius ``eps`` around ``x``, clamped to the data range (pixel units)."""
        eps = self._check_eps(eps, x.shape[0])
        if eps.dim() == 1:
            eps = eps.view((-1,) + (1,) * (x.dim() - 1))
        low, high = self.data_range
        return (x - eps).clamp(low, high), (x + eps).clamp(low, high)

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: Eps, method: str = "IBP",
                beta: Optional[float] = None,
                box: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                clean: str = "grad") -> CertifiedBatch:
        """Clean logits and ``(B, C-1)`` margin lower bounds in one pass.

        ``method`` is one of ``"IBP"``, ``"CROWN-IBP"``, ``"CROWN"``, ``"alpha-CROWN"``. For CROWN-IBP,
        ``beta`` mixes the bounds as in CROWN-IBP training,
        ``beta * crown_ibp + (1 - beta) * ibp``; None means pure CROWN-IBP. ``box``, pixel-space
        ``(x_low, x_high)``, bounds that box instead of the eps ball (SABR's small box); the logits
        stay those of ``x``. alpha-CROWN's bounds carry no gradient (an evaluation method; its
        iteration count is ``bounded``'s ``optimize_bound_args``). ``clean`` says what the logits are for:
        ``"grad"`` a loss; ``"no_grad"`` only a metric, so that their pass runs without autograd; ``"none"``
        nothing, so that the pass does not run and the logits are None. The last two apply to IBP and CROWN-IBP
        where they leave the bounds and their gradients unchanged (:attr:`clean_pass_detachable`); elsewhere
        the logits are those of the whole pass.
        """
        method = self._check_method(method, beta)
        if clean not in CLEAN_PASSES:
            raise ArgumentError("clean", clean, " or ".join(map(repr, CLEAN_PASSES)))
        bounded_x, y = self._bounded_input(x, y, eps, box)
        num_classes = self.num_classes
        spec = margin_spec(self._checked_labels(y, num_classes), num_classes)
        if clean != "grad" and not (method in ("IBP", "CROWN-IBP") and self.clean_pass_detachable):
            clean = "grad"  # the bounds read the clean pass: it runs whole, recorded
        logits, inputs = self._clean_pass(bounded_x, clean)
        if method == "alpha-CROWN":
            return CertifiedBatch(logits, self._alpha_crown(bounded_x, spec))
        return CertifiedBatch(logits, self._margin_bounds(method, beta, spec, inputs))

    def _clean_pass(self, bounded_x: BoundedTensor, clean: str) -> tuple[Optional[torch.Tensor], Optional[tuple]]:
        """The clean pass as ``clean`` asks, whether or not that is sound here: its logits (None when it does not
        run), and the ``x=`` that ``compute_bounds`` then needs (None when the pass set the input)."""
        if clean == "none":  # no forward pass: compute_bounds(x=...) sets the input itself
            return None, (bounded_x,)
        # Otherwise forward on the BoundedTensor first, then compute_bounds without x=, so that train-mode
        # BatchNorm bounds use this batch's statistics.
        with torch.no_grad() if clean == "no_grad" else nullcontext():
            return self.bounded(bounded_x), None

    def _margin_bounds(self, method: str, beta: Optional[float], spec: torch.Tensor, inputs=None) -> torch.Tensor:
        """Margin lower bounds by IBP, CROWN-IBP (mixed by ``beta``) or CROWN; ``inputs``: the bounded input when
        no forward pass set it."""
        if method == "CROWN":
            return self.bounded.compute_bounds(x=inputs, C=spec, method="CROWN", bound_upper=False)[0]
        if method == "IBP" or beta == 0:
            return self.bounded.compute_bounds(x=inputs, C=spec, method="IBP", bound_upper=False)[0]
        if beta is None or beta == 1:
            return self.bounded.compute_bounds(x=inputs, C=spec, method="CROWN-IBP", bound_upper=False)[0]
        ibp_lb, _ = self.bounded.compute_bounds(x=inputs, C=spec, method="IBP", bound_upper=False)
        # IBP=False reuses the intermediate IBP bounds just computed: this is CROWN-IBP's last layer.
        crown_ibp_lb, _ = self.bounded.compute_bounds(C=spec, IBP=False, method="backward", bound_upper=False)
        return beta * crown_ibp_lb + (1.0 - beta) * ibp_lb

    def certify_fused(self, x: torch.Tensor, y: torch.Tensor, eps: Eps, method: str = "IBP",
                      beta: Optional[float] = None) -> FusedBatch:
        """Clean logits and per-example upper bounds ``u_i`` of the robust cross-entropy, through loss fusion.

        ``method`` is ``"IBP"`` or ``"CROWN-IBP"`` (``beta`` mixes them as in :meth:`certify`, here on the upper
        bounds of ``sum_j exp(z_j - z_y)``, as upstream's CIFAR example does). Needs ``loss_fusion=True``.
        """
        if self.fused is None:
            raise ValueError("certify_fused needs a BoundedClassifier built with loss_fusion=True")
        if method not in ("IBP", "CROWN-IBP"):
            raise ValueError(f"loss fusion bounds with method 'IBP' or 'CROWN-IBP', got {method!r}")
        self._check_method(method, beta)
        bounded_x, y = self._bounded_input(x, y, eps)
        y = self._checked_labels(y, self.num_classes)
        self.fused(bounded_x, y)  # the forward first, as in certify (train-mode BatchNorm statistics)
        logits = fused_logits_node(self.fused).forward_value
        return FusedBatch(logits, fused_losses(self.fused, method, beta))

    def _bounded_input(self, x: torch.Tensor, y: torch.Tensor, eps: Eps,
                       box: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[BoundedTensor, torch.Tensor]:
        """The normalised ``BoundedTensor`` of ``x`` over its clamped eps ball (or ``box``), and ``y``, on the device."""
        x, y = x.to(self.device), y.to(self.device)
        if x.dim() < 2 or y.shape != (x.shape[0],):
            raise ValueError(f"expected x of shape (B, ...) and y of shape (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
        x_low, x_high = self.input_box(x, eps) if box is None else (b.to(self.device) for b in box)
        perturbation = PerturbationLpNorm(norm=float("inf"), x_L=self.normalize(x_low), x_U=self.normalize(x_high))
        return BoundedTensor(self.normalize(x), perturbation), y

    def margin_lower_bounds(self, x: torch.Tensor, y: torch.Tensor, eps: Eps, method: str = "IBP",
                            beta: Optional[float] = None) -> torch.Tensor:
        """``(B, C-1)`` lower bounds of ``z_y - z_j`` for ``j != y`` (class order, ``y`` skipped)."""
        return self.certify(x, y, eps, method=method, beta=beta).margin_lb

    @property
    def clean_pass_detachable(self) -> bool:
        """Whether the clean pass may run without autograd, bounds and gradients unchanged (probed once)."""
        if self._clean_pass_detachable is None:
            self._clean_pass_detachable = clean_pass_detachable(self, self.example_shape)
        return self._clean_pass_detachable

    @property
    def num_classes(self) -> int:
        """The model's number of outputs, from the traced graph."""
        return int(self.bounded.final_node().output_shape[-1])

    def _checked_labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``y``, or a ValueError for labels outside ``[0, num_classes)`` (deferred and clamped without sync)."""
        if not self.sync_checks:
            self.deferred.record("labels", (y < 0) | (y >= num_classes))
            return y.clamp(0, num_classes - 1)
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}], got min {int(y.min())} max {int(y.max())}")
        return y

    def check(self, where: str = "") -> None:
        """Raise the ValueError of any bad eps or label counted since the last check (``sync_checks=False``)."""
        self.deferred.raise_if_bad(where)

    def _alpha_crown(self, bounded_x: BoundedTensor, spec: torch.Tensor) -> torch.Tensor:
        """CROWN with its ReLU relaxation slopes optimised (auto_LiRPA's ``CROWN-Optimized``), detached.

        The optimisation needs autograd even under ``no_grad``; the model's parameters are frozen
        meanwhile so that it leaves no ``.grad`` on them.
        """
        # auto_LiRPA 0.3 falls back from sparse to full alphas only when verbose (an indentation slip in
        # BoundRelu.init_opt_parameters), so a layer with over 90% unstable units crashes: use full alphas.
        for node in getattr(self.bounded, "optimizable_activations", ()):
            node.use_sparse_features_alpha = False
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for param in params:
                param.requires_grad_(False)
            with torch.enable_grad():
                lb, _ = self.bounded.compute_bounds(x=(bounded_x,), C=spec, method="CROWN-Optimized",
                                                    bound_upper=False)
        finally:
            for param in params:
                param.requires_grad_(True)
        return lb.detach()

    @staticmethod
    def _check_method(method: str, beta: Optional[float]) -> str:
        if method not in BOUND_METHODS:
            raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
        if beta is not None:
            if method != "CROWN-IBP":
                raise ValueError(f"beta mixes CROWN-IBP with IBP; it needs method='CROWN-IBP', got {method!r}")
            if not 0.0 <= float(beta) <= 1.0:
                raise ValueError(f"beta must lie in [0, 1], got {beta}")
        return method

    def _check_eps(self, eps: Eps, batch: int) -> torch.Tensor:
        eps = torch.as_tensor(eps, dtype=torch.get_default_dtype(), device=self.device)
        if eps.dim() > 1 or (eps.dim() == 1 and eps.shape[0] != batch):
            raise ValueError(f"eps must be a float or a ({batch},) tensor, got shape {tuple(eps.shape)}")
        bad = ~torch.isfinite(eps) | (eps < 0)
        if not self.sync_checks:
            self.deferred.record("eps", bad)
        elif bad.any():
            where = bad.nonzero().flatten().tolist()[:5]
            raise ValueError(f"eps must be finite and >= 0; bad value(s) {eps[bad].flatten()[:5].tolist()} at {where}")
        return eps


# --- loss fusion ---------------------------------------------------------------------------------------------------
# auto_LiRPA's CrossEntropyWrapper computes sum_j exp(z_j - z_y); with the bound option loss_fusion its Exp node
# subtracts a per-example shift M (max_input) before exponentiating, so the bound pass returns ub = U * exp(-M), U the
# upper bound of the sum, and the robust CE bound is log U = log(ub) + M.


def cross_entropy_wrapper():
    """auto_LiRPA's ``CrossEntropyWrapper`` (top level in 0.3 and 0.7.x, ``auto_LiRPA.utils`` in some), or None."""
    import auto_LiRPA

    found = getattr(auto_LiRPA, "CrossEntropyWrapper", None)
    if found is None:
        found = getattr(importlib.import_module("auto_LiRPA.utils"), "CrossEntropyWrapper", None)
    return found


def fused_graph(model: nn.Module, example: torch.Tensor, device, bound_opts: Optional[dict]) -> BoundedModule:
    """A ``BoundedModule`` of ``CrossEntropyWrapper(model)`` with loss fusion on (same Parameter objects)."""
    wrapper = cross_entropy_wrapper()
    if wrapper is None:
        raise ArgumentError("loss_fusion", True, "false: this auto_LiRPA has no CrossEntropyWrapper")
    labels = torch.zeros(example.shape[0], dtype=torch.long, device=example.device)
    options = dict(bound_opts or {}, loss_fusion=True)
    return BoundedModule(wrapper(model), (example, labels), device=device, bound_opts=options)


def _exp_node(fused: BoundedModule):
    nodes = [node for node in fused._modules.values() if type(node).__name__ == "BoundExp"]
    if len(nodes) != 1:
        raise RuntimeError(f"expected one Exp node in the loss-fusion graph, found {len(nodes)}")
    return nodes[0]


def fused_logits_node(fused: BoundedModule):
    """The node of the model's logits in the wrapper's graph: Exp <- Sub(logits, gathered true logit)."""
    return _exp_node(fused).inputs[0].inputs[0]


def _upper_bound(fused: BoundedModule, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ub, M)`` of one bound pass, both ``(B,)``: the shifted upper bound and the Exp node's shift."""
    _, ub = fused.compute_bounds(bound_lower=False, bound_upper=True, **options)
    shift = _exp_node(fused).max_input
    return ub.view(-1), shift.reshape(-1)


def fused_losses(fused: BoundedModule, method: str = "IBP", beta: Optional[float] = None) -> torch.Tensor:
    """Per-example upper bounds ``u_i`` ``(B,)`` of the robust CE from a loss-fusion ``BoundedModule``.

    ``fused`` is ``BoundedModule(CrossEntropyWrapper(model), ..., bound_opts={"loss_fusion": True})`` right after
    its forward on ``(BoundedTensor(x, ptb), labels)`` (upstream's CIFAR example builds exactly that).
    ``method`` ``"IBP"`` or ``"CROWN-IBP"``; ``beta`` mixes CROWN-IBP's upper bound with IBP's (None: pure).
    A ``BoundDataParallel`` (upstream's wrapper) is bounded through the module it holds, on one device.
    """
    if isinstance(fused, nn.DataParallel):
        fused = fused.module
    if method not in ("IBP", "CROWN-IBP"):
        raise ValueError(f"loss fusion bounds with method 'IBP' or 'CROWN-IBP', got {method!r}")
    if method == "IBP" or beta == 0:
        return fused_ibp_losses(fused)
    if beta is None or beta == 1:
        return fused_crown_ibp_losses(fused)
    return fused_mixed_losses(fused, float(beta))


def fused_ibp_losses(fused: BoundedModule) -> torch.Tensor:
    """IBP: ``log(ub) + M``; M carries its gradient here, and log(ub) + M does not depend on it (exact)."""
    ub, shift = _upper_bound(fused, IBP=True, method=None)
    return torch.log(ub) + shift


def fused_crown_ibp_losses(fused: BoundedModule) -> torch.Tensor:
    """CROWN-IBP: ``log(ub) + M`` with M detached in the backward pass, so ub = U exp(-M) holds M constant."""
    ub, shift = _upper_bound(fused, method="CROWN-IBP")
    return torch.log(ub) + shift


def fused_mixed_losses(fused: BoundedModule, beta: float) -> torch.Tensor:
    """``log(beta U_crown + (1 - beta) U_ibp)`` from one IBP and one backward pass, both shifts honoured.

    The IBP pass's shift M_i carries a gradient, the backward pass's M_c does not. ``ub_ibp * exp(M_i - M_c)``
    is U_ibp exp(-M_c) with the gradient of U_ibp alone (the M_i in ub_ibp and in the factor cancel), so both
    terms share the constant M_c. Upstream's example adds M_c to the mixed ub as it is, dropping d(ub_ibp)/dM_i.
    """
    ibp_ub, ibp_shift = _upper_bound(fused, IBP=True, method=None)
    # IBP=False reuses the intermediate IBP bounds just computed: this is CROWN-IBP's last layer.
    crown_ub, crown_shift = _upper_bound(fused, IBP=False, method="backward")
    crown_shift = crown_shift.detach()
    mixed = beta * crown_ub + (1.0 - beta) * ibp_ub * torch.exp(ibp_shift - crown_shift)
    return torch.log(mixed) + crown_shift
