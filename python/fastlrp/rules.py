"""LRP rules as data.

A rule is a small frozen dataclass: its kind and parameters. Backends read
``rule.kind`` and the fields; nothing here computes. Formulas follow zennit's
semantics (see docs/design.md section 2). Notation: a layer computes ``z = W x + b``;
``x+ = max(x, 0)``, ``x- = min(x, 0)`` and likewise for ``W`` and ``b``; the
stabilizer is ``s(z) = z + eps * sign(z)`` with ``sign(0) = +1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "Rule",
    "Epsilon",
    "ZPlus",
    "AlphaBeta",
    "Gamma",
    "ZBox",
    "Flat",
    "WSquare",
    "Norm",
    "Pass",
    "WinnerTakesAll",
    "Gate",
    "Uniform",
    "Gradient",
    "AlphaBetaX",
    "UniformEpsilon",
    "GateEpsilon",
    "Taylor",
    "RuleError",
    "PARAMETRIC_RULES",
    "OPTION_DEFAULTS",
    "rule_options",
    "stabilizer_of",
]


class RuleError(ValueError):
    """A rule was given invalid arguments, or applied to a layer it does not fit."""


def _check_eps(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise RuleError(f"{name} must be a finite number >= 0, got {value}")
    return value


#: The stabilizers a rule's ``guard`` option names: ``"sign"`` divides by
#: ``z + eps * sign(z)`` (zennit's, the default); ``"zero"`` divides by ``z`` with only
#: exact zeros replaced by ``eps`` (iNNvestigate's ``safe_divide``).
GUARDS = ("sign", "zero")


def _check_guard(name: str, value: str) -> None:
    if value not in GUARDS:
        raise RuleError(f"{name} must be one of {GUARDS}, got {value!r}")


@dataclass(frozen=True)
class Rule:
    """Base class. ``kind`` names the rule for backends."""

    kind = "rule"

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if not isinstance(v, np.ndarray))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Epsilon(Rule):
    """``R_in = x * W^T [R / s(W x + b)]``.

    Parameters
    ----------
    epsilon : float
        Stabilizer added with the sign of ``z`` (default 1e-6, as zennit).
    zero_bias : bool
        Drop the bias from ``z`` (iNNvestigate's "ignore bias"; zennit's
        ``zero_params=['bias']``).
    guard : str
        ``"sign"`` (default): divide by ``z + eps * sign(z)``; ``"zero"``: divide by
        ``z`` with only exact zeros replaced by ``eps`` (iNNvestigate's Z rule).
    """

    epsilon: float = 1e-6
    zero_bias: bool = False
    guard: str = "sign"
    kind = "epsilon"

    def __post_init__(self):
        _check_eps("Epsilon.epsilon", self.epsilon)
        _check_guard("Epsilon.guard", self.guard)


@dataclass(frozen=True)
class ZPlus(Rule):
    """``z+ = W+ x+ + W- x- + b+``; ``R_in = x+ * W+^T g + x- * W-^T g``, ``g = R / s(z+)``.

    Inputs are split by sign, not only weights: positive contributions come
    from positive inputs through positive weights and negative inputs through
    negative weights. ``split_inputs=False`` is iNNvestigate's ZPlusFast, meant
    for ``x >= 0``: ``z = W+ x + b+``, ``R_in = x * W+^T g`` with the inputs as they
    are. ``guard``: as for :class:`Epsilon`.
    """

    stabilizer: float = 1e-6
    zero_bias: bool = False
    guard: str = "sign"
    split_inputs: bool = True
    kind = "zplus"

    def __post_init__(self):
        _check_eps("ZPlus.stabilizer", self.stabilizer)
        _check_guard("ZPlus.guard", self.guard)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """``R_in = a (x+ W+^T ga + x- W-^T ga) - b (x+ W-^T gb + x- W+^T gb)``.

    ``za = W+ x+ + W- x- + b+``, ``zb = W- x+ + W+ x- + b-``,
    ``ga = R / s(za)``, ``gb = R / s(zb)``; needs ``alpha - beta = 1``,
    ``alpha, beta >= 0``. ``whole_bias=True`` puts the whole bias ``b`` (not
    ``b+`` / ``b-``) into both ``za`` and ``zb`` (iNNvestigate's AlphaBetaRule).
    ``guard``: as for :class:`Epsilon`.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    zero_bias: bool = False
    guard: str = "sign"
    whole_bias: bool = False
    kind = "alphabeta"

    def __post_init__(self):
        a, b = float(self.alpha), float(self.beta)
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0:
            raise RuleError(f"AlphaBeta needs alpha >= 0 and beta >= 0, got alpha={a}, beta={b}")
        if abs((a - b) - 1.0) > 1e-9:
            raise RuleError(f"AlphaBeta needs alpha - beta = 1 to conserve relevance, got alpha={a}, beta={b}")
        _check_eps("AlphaBeta.stabilizer", self.stabilizer)
        _check_guard("AlphaBeta.guard", self.guard)


@dataclass(frozen=True)
class Gamma(Rule):
    """Gamma rule with zennit's sign handling.

    ``Wu = W + g W+``, ``Wd = W + g W-`` (biases likewise); ``zp = Wu x+ + Wd x- + bu``,
    ``zn = Wd x+ + Wu x- + bd``; ``gp = [z > 0] R / s(zp)``, ``gn = [z < 0] R / s(zn)``;
    ``R_in = x+ Wu^T gp + x- Wd^T gp + x+ Wd^T gn + x- Wu^T gn``.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    zero_bias: bool = False
    kind = "gamma"

    def __post_init__(self):
        g = float(self.gamma)
        if not math.isfinite(g) or g < 0:
            raise RuleError(f"Gamma needs gamma >= 0, got {g}")
        _check_eps("Gamma.stabilizer", self.stabilizer)


@dataclass(frozen=True)
class ZBox(Rule):
    """Bounded-input rule for the first layer.

    ``zB = W x - W+ l - W- h`` (the bias cancels, as in zennit);
    ``R_in = x W^T g - l W+^T g - h W-^T g`` with ``g = R / s(zB)``.

    ``low`` and ``high`` are scalars or arrays broadcastable to one sample's
    input shape (e.g. per-channel bounds of shape ``(C, 1, 1)``).
    """

    low: object = 0.0
    high: object = 1.0
    stabilizer: float = 1e-6
    kind = "zbox"

    def __post_init__(self):
        low = np.asarray(self.low, dtype=np.float64)
        high = np.asarray(self.high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise RuleError("ZBox bounds must be finite")
        if np.any(np.broadcast_to(low, np.broadcast_shapes(low.shape, high.shape)) > high):
            raise RuleError(f"ZBox needs low <= high, got low={self.low}, high={self.high}")
        _check_eps("ZBox.stabilizer", self.stabilizer)

    def __hash__(self):
        return hash((self.kind, np.asarray(self.low).tobytes(), np.asarray(self.high).tobytes(), self.stabilizer))

    def __eq__(self, other):
        return (
            isinstance(other, ZBox)
            and np.array_equal(np.asarray(self.low), np.asarray(other.low))
            and np.array_equal(np.asarray(self.high), np.asarray(other.high))
            and self.stabilizer == other.stabilizer
        )


@dataclass(frozen=True)
class Flat(Rule):
    """``R_in = 1^T [R / s(n)]``: spread uniformly over the receptive field
    (``n`` counts the in-bounds taps feeding each output; padding excluded)."""

    stabilizer: float = 1e-6
    kind = "flat"

    def __post_init__(self):
        _check_eps("Flat.stabilizer", self.stabilizer)


@dataclass(frozen=True)
class WSquare(Rule):
    """``R_in = (W^2)^T [R / s(W^2 1 + b^2)]`` (zennit squares the bias). ``guard``: as for
    :class:`Epsilon`."""

    stabilizer: float = 1e-6
    zero_bias: bool = False
    guard: str = "sign"
    kind = "wsquare"

    def __post_init__(self):
        _check_eps("WSquare.stabilizer", self.stabilizer)
        _check_guard("WSquare.guard", self.guard)


@dataclass(frozen=True)
class Norm(Rule):
    """``R_in = x * J^T [R / s(f(x))]``: each input gets its share of the
    output. Used for average pooling (per channel) and residual sums. On a max
    pooling layer it is the opt-in proportional variant: each input of a window gets
    ``x_i / s(sum of the window)`` of the window's relevance (padding excluded).
    ``guard``: as for :class:`Epsilon` (iNNvestigate's Add and average pooling: ``"zero"``)."""

    stabilizer: float = 1e-6
    guard: str = "sign"
    kind = "norm"

    def __post_init__(self):
        _check_eps("Norm.stabilizer", self.stabilizer)
        _check_guard("Norm.guard", self.guard)


@dataclass(frozen=True)
class Pass(Rule):
    """``R_in = R``: elementwise activations, unfolded BatchNorm, routing."""

    kind = "pass"


@dataclass(frozen=True)
class WinnerTakesAll(Rule):
    """Max pooling: relevance goes to each window's arg-max (the gradient's
    routing; overlapping windows accumulate). The default for max pooling."""

    kind = "winner"


@dataclass(frozen=True)
class Gate(Rule):
    """Product of two tensors ``y = a * b`` with one operand, the gate, held constant:
    all relevance goes to the other operand (``R_other = R``; a product with a constant
    factor is a diagonal linear map, and LRP's rules give it the identity). ``gate`` is
    the index (0 or 1) of the gating operand; None picks it from the graph: a sigmoid
    or hard-sigmoid output, a constant, or the operand broadcast over the other
    (squeeze-excitation's per-channel scale)."""

    gate: object = None
    kind = "gate"

    def __post_init__(self):
        if self.gate is not None and self.gate not in (0, 1):
            raise RuleError(f"Gate needs gate=0, 1 or None, got {self.gate!r}")


@dataclass(frozen=True)
class Uniform(Rule):
    """Product of tensors: each operand gets an equal share of the relevance
    (AttnLRP's uniform rule for multiplicative interactions, ``R_i = R / 2``)."""

    kind = "uniform"


@dataclass(frozen=True)
class Gradient(Rule):
    """Elementwise activation: relevance times the local derivative, ``R_in = R * f'(x)``
    (softmax: the vector-Jacobian product). iNNvestigate maps activation *layers* other
    than ``Activation`` (Keras' ``ReLU``, ``LeakyReLU``, ``ELU``, ``Softmax``) this way: a
    ReLU layer zeroes the relevance of its dead units."""

    kind = "gradient"


@dataclass(frozen=True)
class AlphaBetaX(Rule):
    """The four sign combinations of AlphaBeta, each with its own denominator
    (iNNvestigate's AlphaBetaXRule; its sequential presets use ``alpha=(2, 0),
    beta=(1, 0)`` at BatchNormalization layers)::

        R_in = alpha[0] R_pp + alpha[1] R_nn - beta[0] R_pn - beta[1] R_np
        R_pp = x+ * W+^T [R / s(W+ x+ + b+)]     R_nn = x- * W-^T [R / s(W- x- + b-)]
        R_pn = x+ * W-^T [R / s(W- x+ + b-)]     R_np = x- * W+^T [R / s(W+ x- + b+)]

    (iNNvestigate 2.1.2's code weighs ``R_nn`` by ``beta[1]`` where its documentation
    says ``alpha[1]``; the two agree for its presets, where both are 0.)
    ``zero_bias`` drops the biases; ``guard``: as for :class:`Epsilon`.
    """

    alpha: tuple = (0.5, 0.5)
    beta: tuple = (0.5, 0.5)
    stabilizer: float = 1e-6
    zero_bias: bool = False
    guard: str = "sign"
    kind = "alphabetax"

    def __post_init__(self):
        for name in ("alpha", "beta"):
            v = tuple(float(c) for c in getattr(self, name))
            if len(v) != 2 or not all(math.isfinite(c) for c in v):
                raise RuleError(f"AlphaBetaX.{name} must be two finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        _check_eps("AlphaBetaX.stabilizer", self.stabilizer)
        _check_guard("AlphaBetaX.guard", self.guard)


@dataclass(frozen=True)
class UniformEpsilon(Rule):
    """Product of two activations, ``z = a @ b`` (attention's ``q k^T`` and ``A v``):
    AttnLRP's uniform epsilon rule. The epsilon rule of the bilinear map with the
    relevance split evenly between the operands: ``g = R / (2 s(z))``,
    ``R_a = a * (g b^T)``, ``R_b = b * (a^T g)``; conserves up to the stabilizer."""

    epsilon: float = 1e-6
    kind = "uniform_epsilon"

    def __post_init__(self):
        _check_eps("UniformEpsilon.epsilon", self.epsilon)


@dataclass(frozen=True)
class GateEpsilon(Rule):
    """Product of two activations ``z = a @ b`` with one operand, the gate, held
    constant (CP-LRP: the attention weights): the epsilon rule of the linear map of
    the other operand, ``R_b = b * (a^T [R / s(z)])`` for ``gate=0``; the gate gets
    none. ``gate`` is 0, 1, or None: the operand computed by a softmax (the
    attention weights, seen through reshapes and permutes)."""

    gate: object = None
    epsilon: float = 1e-6
    kind = "gate_epsilon"

    def __post_init__(self):
        if self.gate is not None and self.gate not in (0, 1):
            raise RuleError(f"GateEpsilon needs gate=0, 1 or None, got {self.gate!r}")
        _check_eps("GateEpsilon.epsilon", self.epsilon)


@dataclass(frozen=True)
class Taylor(Rule):
    """A smooth function linearised at its input with the offset dropped,
    ``R_x = x * J(x)^T [R / y]`` (Gradient x Input of one layer): AttnLRP's softmax
    rule, ``R_x = x * (R - y * sum R)`` along the softmax's axis. Does not conserve
    (the dropped offset absorbs or adds relevance)."""

    kind = "taylor"


#: Rules that need a dense/conv layer's weights.
PARAMETRIC_RULES = ("epsilon", "zplus", "alphabeta", "gamma", "zbox", "flat", "wsquare")

#: Rule options that change a rule's arithmetic from zennit's, with their defaults
#: (iNNvestigate's conventions). A backend kernel runs a rule that sets one of them
#: only where it is registered for that option (fastlrp.backends.dispatch); else the
#: one fallback runs it.
OPTION_DEFAULTS = {"guard": "sign", "whole_bias": False, "split_inputs": True}


def rule_options(rule: Rule) -> tuple:
    """The options of :data:`OPTION_DEFAULTS` that ``rule`` sets to another value than the default."""
    return tuple(k for k, v in OPTION_DEFAULTS.items() if getattr(rule, k, v) != v)


def stabilizer_of(rule: Rule) -> float:
    """The epsilon of a rule's stabilized denominator ``s(z) = z + eps * sign(z)``:
    ``Epsilon.epsilon`` or the ``stabilizer`` of the other rules; 0.0 for rules
    without a division (Pass, WinnerTakesAll)."""
    if isinstance(rule, (Epsilon, UniformEpsilon, GateEpsilon)):
        return float(rule.epsilon)
    return float(getattr(rule, "stabilizer", 0.0))
