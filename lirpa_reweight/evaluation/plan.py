"""Which stages of the verification cascade run, checked once before any work.

The cascade runs cheapest first, each stage on the examples still open: the clean prediction, the bound methods
asked for (IBP, CROWN-IBP, CROWN, alpha-CROWN, in that order), the attacks (our PGD, then AutoAttack's APGD-CE and
APGD-T when asked for), then alpha-beta-CROWN (``abcrown``) with a per-example time limit. Full CROWN and
alpha-CROWN follow the size rule :data:`CROWN_MAX_RELU_UNITS`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..core.bounds import BOUND_METHODS
from ..errors import ArgumentError

#: Full CROWN bounds every hidden unit by a backward pass, so its cost grows with units x input size per example:
#: ~0.1 s per example on CPU for cnn_4layer on MNIST (4804 units), ~10 GB per example for the 32x32 CNNs.
#: Above this many ReLU units per example it is skipped (and the reason recorded) unless asked for.
CROWN_MAX_RELU_UNITS = 2000
#: The methods that bound every hidden unit by a backward pass, and so share that size rule.
FULL_CROWN = ("CROWN", "alpha-CROWN")
#: alpha-CROWN's optimisation steps of the ReLU slopes (auto_LiRPA's default).
ALPHA_CROWN_ITERATIONS = 20
#: The complete verifier, alpha-beta-CROWN, as ``eval.methods`` names it.
ABCROWN = "abcrown"
#: What ``methods`` may hold: the bound methods, then the complete verifier.
VERIFIERS = (*BOUND_METHODS, ABCROWN)
#: PGD's losses: the margin max_{j != y} z_j - z_y (what alpha-beta-CROWN attacks) or the cross-entropy.
PGD_LOSSES = ("margin", "ce")


@dataclass(frozen=True)
class AttackOptions:
    """The evaluation's PGD: ``steps`` per restart (0: no attack), ``restarts``, ``step_size`` (a multiple of
    eps; None: 2.5 / steps), ``loss`` (:data:`PGD_LOSSES`), ``centre_start`` (the first restart starts at the
    centre of the clamped box, which is not x where the box is clipped), ``seed`` (each example's random starts
    come from ``seed`` and its dataset index, so they do not depend on the batch, the rank or a resume).
    ``autoattack``: also run AutoAttack's APGD-CE and APGD-T (torchattacks) on what PGD left open."""

    steps: int = 100
    restarts: int = 10
    step_size: Optional[float] = None
    loss: str = "margin"
    centre_start: bool = True
    seed: int = 0
    autoattack: bool = False
    autoattack_steps: int = 100

    def __post_init__(self):
        _integer("pgd_steps", self.steps, 0)
        _integer("pgd_restarts", self.restarts, 1)
        _integer("pgd_seed", self.seed, None)
        _integer("autoattack_steps", self.autoattack_steps, 1)
        if self.step_size is not None and not (_is_number(self.step_size) and self.step_size > 0):
            raise ArgumentError("pgd_step_size", self.step_size, "null (2.5 / steps) or a number > 0 (a multiple of eps)")
        if self.loss not in PGD_LOSSES:
            raise ArgumentError("pgd_loss", self.loss, f"one of {list(PGD_LOSSES)}")
        for key, value in (("pgd_centre_start", self.centre_start), ("autoattack", self.autoattack)):
            if not isinstance(value, bool):
                raise ArgumentError(key, value, "true or false")
        if self.autoattack and importlib.util.find_spec("torchattacks") is None:
            raise ArgumentError("autoattack", True, "needs torchattacks, which is not installed: pip install "
                                                    "'torchattacks==3.5.1' --no-deps (or this package's [attack] extra)")


@dataclass(frozen=True)
class AbcrownOptions:
    """alpha-beta-CROWN's stage: ``timeout`` seconds per example (a timeout is ``unknown``), ``device`` (None:
    the classifier's), ``config``: further options merged into its ``ConfigBuilder`` (nested, as its YAML)."""

    timeout: float = 30.0
    device: Optional[str] = None
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (_is_number(self.timeout) and self.timeout > 0):
            raise ArgumentError("abcrown.timeout", self.timeout, "a number of seconds > 0")
        if self.device is not None and not isinstance(self.device, str):
            raise ArgumentError("abcrown.device", self.device, "null (the model's device) or a device name")
        if not isinstance(self.config, dict):
            raise ArgumentError("abcrown.config", self.config, "a mapping of alpha-beta-CROWN options")


@dataclass(frozen=True)
class Plan:
    """The checked cascade: bound ``methods`` in order, the ``attack``, alpha-beta-CROWN's options (None: not
    asked for), and the size rule of full CROWN (``crown_limit_key`` is what the user calls the limit)."""

    methods: tuple
    attack: AttackOptions
    abcrown: Optional[AbcrownOptions]
    crown_max_relu_units: int = CROWN_MAX_RELU_UNITS
    alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS
    crown_limit_key: str = "crown_max_relu_units"
    crown_batch_size: int = 16  # full CROWN's memory grows with the batch, so it runs in chunks of this many

    @property
    def verifiers(self) -> tuple:
        return self.methods + ((ABCROWN,) if self.abcrown is not None else ())

    def fingerprint(self) -> dict:
        """What an examples log must have been written under to be resumed (everything that changes outcomes)."""
        return {"methods": list(self.verifiers), "attack": self.attack.__dict__,
                "abcrown": None if self.abcrown is None else self.abcrown.__dict__,
                "crown_max_relu_units": self.crown_max_relu_units, "alpha_crown_iterations": self.alpha_crown_iterations}


INSTALL = ("install alpha-beta-CROWN (pip install . in its clone, or its clone's root on PYTHONPATH) and upstream "
           "auto_LiRPA 0.7.x with torch < 2.9 by their own instructions, "
           "https://github.com/Verified-Intelligence/alpha-beta-CROWN#installation-and-setup; see "
           "docs/verification.md")


def require_abcrown():
    """alpha-beta-CROWN's API module; where it cannot be imported, the one-line refusal naming how to install it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints on import; evaluate's stdout is its JSON
            import abcrown
        for name in ("ABCrownSolver", "VerificationSpec", "ConfigBuilder", "input_vars", "output_vars"):
            getattr(abcrown, name)
    except (ImportError, AttributeError) as error:
        raise ArgumentError("methods", "abcrown", f"alpha-beta-CROWN is not importable here ({error}); "
                                                  f"{INSTALL}") from None
    return abcrown


def check_options(methods: Sequence[str], alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS) -> None:
    """Refuse verifiers the cascade cannot run, naming the argument (before any work); ``abcrown`` is refused
    here, in one line saying how to install it, where it is not importable."""
    if (isinstance(methods, str) or not methods or len(set(methods)) != len(methods)
            or any(m not in VERIFIERS for m in methods)):
        raise ArgumentError("methods", list(methods) if not isinstance(methods, str) else methods,
                            f"a non-empty list without repeats drawn from {list(VERIFIERS)}")
    _integer("alpha_crown_iterations", alpha_crown_iterations, 1)
    if ABCROWN in methods:
        require_abcrown()


def make_plan(methods: Sequence[str], attack: Optional[AttackOptions] = None,
              abcrown: Optional[AbcrownOptions] = None, crown_max_relu_units: int = CROWN_MAX_RELU_UNITS,
              alpha_crown_iterations: int = ALPHA_CROWN_ITERATIONS,
              crown_limit_key: str = "crown_max_relu_units", crown_batch_size: int = 16) -> Plan:
    """The checked :class:`Plan`; the bound methods run in the cascade's order whatever order they are given in."""
    check_options(methods, alpha_crown_iterations)
    _integer(crown_limit_key, crown_max_relu_units, 0)
    bounds = tuple(m for m in BOUND_METHODS if m in methods)
    return Plan(bounds, attack or AttackOptions(), (abcrown or AbcrownOptions()) if ABCROWN in methods else None,
                crown_max_relu_units, alpha_crown_iterations, crown_limit_key, crown_batch_size)


def full_crown_skips(plan: Plan, units: int) -> dict:
    """``{method: reason}`` for the full-CROWN methods the size rule skips on a model of ``units`` ReLU units."""
    if units <= plan.crown_max_relu_units:
        return {}
    reason = (f"the model has {units} ReLU units per example, above the limit of {plan.crown_max_relu_units} "
              f"({plan.crown_limit_key}): full CROWN costs about 0.1 s per example on CPU at 5000 units and grows "
              "with the model; raise the limit to run it anyway")
    return {m: reason for m in plan.methods if m in FULL_CROWN}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(key: str, value, minimum: Optional[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ArgumentError(key, value, "an integer" + ("" if minimum is None else f" >= {minimum}"))


#: The attack's config keys (``eval.*`` in train, top level in evaluate) and the :class:`AttackOptions` field
#: each fills; :func:`options_from_config` reads them, the options check them.
ATTACK_KEYS = {"pgd_steps": "steps", "pgd_restarts": "restarts", "pgd_step_size": "step_size", "pgd_loss": "loss",
               "pgd_centre_start": "centre_start", "pgd_seed": "seed", "autoattack": "autoattack",
               "autoattack_steps": "autoattack_steps"}


def options_from_config(section: dict) -> tuple[AttackOptions, AbcrownOptions]:
    """The attack's and alpha-beta-CROWN's options from a config section (missing keys keep their defaults)."""
    attack = AttackOptions(**{field_: section[key] for key, field_ in ATTACK_KEYS.items() if key in section})
    abcrown = dict(section.get("abcrown") or {})
    unknown = sorted(set(abcrown) - {"timeout", "device", "config"})
    if unknown:
        raise ArgumentError(f"abcrown.{unknown[0]}", abcrown[unknown[0]], "no such option; allowed: timeout, "
                                                                          "device, config")
    return attack, AbcrownOptions(**{k: (dict(v or {}) if k == "config" else v) for k, v in abcrown.items()})
