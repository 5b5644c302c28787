"""The op registry: what a layer type is, declared once.

An :class:`OpSpec` describes one ``Node.op`` of the IR: how many inputs it
takes, how its attributes are checked and its output shape inferred, which LRP
rules it accepts and which one it gets when a composite does not say, which
layer-type keys a composite can map it by, whether its output is non-negative
when its inputs are, and its float64 reference implementation (forward and
relevance). Backends find their kernels for an op by its name
(:mod:`fastlrp.backends.dispatch`); everything else about the op lives in the
op family's module under :mod:`fastlrp.ops`.

The reference implementations are written with NumPy so that they keep the
dtype of their inputs: the float64 reference backend runs them on float64
arrays, and the one fallback of the float32 backends runs the same code on
float32 arrays.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import GraphError

__all__ = ["OpSpec", "RefOp", "register_op", "spec", "names", "stabilize", "need_inputs", "pass_keeps_shape",
           "check_window"]


class RefOp(Protocol):
    """A prepared node: the contract between the engine and every backend."""

    def forward(self, inputs: list) -> tuple[np.ndarray, Any]: ...

    def relevance(self, ctx: Any, R: np.ndarray) -> list: ...


class OpSpec:
    """One op of the IR. Subclasses set the class attributes and override the
    methods that differ from these defaults.

    Attributes
    ----------
    name : str
        The ``Node.op`` string.
    rules : tuple of str
        The rule kinds (``Rule.kind``) a composite may give this op.
    parametric : bool
        The op has weights that parametric rules (Epsilon, ZPlus, ...) act on;
        such a node must be mapped explicitly by a composite.
    doc : str
        One line for listings (``fastlrp info``, docs).
    """

    name: str = ""
    rules: tuple = ("pass",)
    parametric: bool = False
    doc: str = ""

    # -- structure -------------------------------------------------------------------
    def infer(self, node, in_shapes: list) -> tuple:
        """Check ``node``'s inputs and attributes; return its per-sample output shape.
        Raise :class:`~fastlrp.errors.GraphError` naming the node on bad input."""
        raise NotImplementedError

    def type_keys(self, node) -> tuple:
        """The layer-type keys a composite can map this node by, most specific first."""
        return (self.name,)

    def default_rule(self, graph, node, stabilizer: float):
        """The rule a node gets when no composite entry maps it (None: it must be mapped)."""
        from ..rules import Pass

        return Pass()

    def check_rule(self, graph, node, rule) -> None:
        """Raise :class:`~fastlrp.rules.RuleError` (naming the node) when ``rule``, of an
        allowed kind, cannot be applied to this particular node."""

    def nonnegative(self, node, inputs_nonneg: list) -> bool:
        """Whether the output is >= 0 by construction, given whether each input is."""
        return False

    def silent_inputs(self, graph, node, rule) -> tuple:
        """Indices of the inputs that ``rule`` gives zero relevance whatever arrives (a gate
        held constant: CP-LRP's attention weights, a squeeze-excitation gate). The plan sends
        no relevance along them, and keeps no forward context of nodes that then get none."""
        return ()

    # -- the float64 reference -------------------------------------------------------------
    def reference(self, graph, node, rule) -> RefOp:
        """A prepared node computing the forward pass and the relevance of ``rule``
        with NumPy in the dtype of its inputs (the oracle of every backend)."""
        raise NotImplementedError


_REGISTRY: dict[str, OpSpec] = {}


def register_op(op_spec: OpSpec) -> OpSpec:
    """Add an op to the registry (its ``name`` must be new)."""
    if not op_spec.name:
        raise ValueError("an OpSpec needs a name")
    if op_spec.name in _REGISTRY:
        raise ValueError(f"op '{op_spec.name}' is already registered")
    _REGISTRY[op_spec.name] = op_spec
    return op_spec


def spec(name: str) -> OpSpec:
    """The :class:`OpSpec` of op ``name``; GraphError for an unknown op."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown op '{name}' (known: {', '.join(_REGISTRY)})") from None


def names() -> tuple:
    """Every registered op name, in registration order."""
    return tuple(_REGISTRY)


def need_inputs(node, in_shapes: list, k: int) -> None:
    if len(in_shapes) != k:
        raise GraphError(f"{node.describe()}: expects {k} input(s), got {len(in_shapes)}")


def check_window(node, d: int, kernel=None) -> None:
    """Check a window op's geometry attributes (``stride``, ``dilation``, ``padding``
    pairs and, for pools, ``kernel``): ``d`` integers each, strides, dilations and
    kernel sizes >= 1, paddings >= 0; the error names the node and the attribute."""
    a = node.attrs
    if d not in (1, 2):
        raise GraphError(f"{node.describe()}: dims must be 1 or 2, got {d!r}")

    def ints(key, values, low, pairs=False):
        try:
            shaped = len(values) == d and (not pairs or all(len(p) == 2 for p in values))
            flat = [v for p in values for v in p] if pairs else list(values)
        except TypeError:
            shaped, flat = False, []
        if not shaped or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
            what = f"{d} (before, after) pairs of integers" if pairs else f"{d} integers"
            raise GraphError(f"{node.describe()}: {key} must be {what}, got {values!r}")
        if any(v < low for v in flat):
            raise GraphError(f"{node.describe()}: {key} {tuple(values)!r} must be >= {low}")

    ints("stride", a.get("stride", (1,) * d), 1)
    ints("dilation", a.get("dilation", (1,) * d), 1)
    ints("padding", a.get("padding", ((0, 0),) * d), 0, pairs=True)
    if kernel is not None:
        ints("kernel", kernel, 1)


def pass_keeps_shape(graph, node, rule) -> None:
    """Pass hands relevance through unchanged: only a node whose output has its input's shape."""
    if rule.kind == "pass" and tuple(graph[node.inputs[0]].shape) != tuple(node.shape):
        from ..rules import RuleError

        raise RuleError(f"rule Pass cannot be applied to {node.describe()}: it changes the shape "
                        f"{tuple(graph[node.inputs[0]].shape)} -> {tuple(node.shape)}, so relevance cannot pass "
                        "through unchanged")


def stabilize(z: np.ndarray, eps: float, guard: str = "sign") -> np.ndarray:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (zennit's stabilizer), in z's dtype;
    ``guard="zero"``: ``z`` with only its exact zeros replaced by ``eps`` (iNNvestigate's
    ``safe_divide``; the rules' ``guard`` option)."""
    z = np.asarray(z)
    if guard == "zero":
        return np.where(z == 0, eps, z).astype(z.dtype, copy=False)
    return z + np.where(z >= 0, eps, -eps).astype(z.dtype, copy=False)
