"""Ops that combine two or more tensors elementwise, with NumPy broadcasting of
the per-sample shapes (right-aligned; the batch axis broadcasts too, so a
``const`` operand of batch 1 works), and constants.

``add``    two or more inputs, summed (residual connections, biases and position
           embeddings as ``const`` operands). Norm (the default): each summand
           gets its share, ``R_i = x_i R / s(sum)``; Pass splits relevance evenly.
           ``s(sum)`` does not depend on the target: it is computed once in the
           forward pass and shared.
``mul``    the product of two inputs (squeeze-excitation gates, layer scale,
           ``x * c``). :class:`~fastlrp.rules.Gate` (the default when one operand is
           a gate, see :func:`gate_operand`): the gate is held constant and all
           relevance goes to the other operand; :class:`~fastlrp.rules.Uniform`
           (the default otherwise): each operand gets half.
``const``  no inputs; params ``value``: a per-sample array (no batch axis), e.g. a
           learned class token, position embedding or layer-scale vector, or a
           scalar. Relevance reaching it is absorbed, like a bias's.

An operand broadcast in the forward pass gets its relevance summed over the
broadcast axes (per sample: the batch axis is kept).
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, need_inputs, register_op, stabilize

__all__ = ["broadcast_shape", "gate_operand", "kept_operand", "unbroadcast"]


def broadcast_shape(node, in_shapes) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in in_shapes]))
    except ValueError:
        raise GraphError(f"{node.describe()}: operands have different shapes {list(in_shapes)} that do not "
                         "broadcast") from None


def unbroadcast(r: np.ndarray, shape: tuple) -> np.ndarray:
    """Relevance ``r`` (N, *out) of an operand of per-sample ``shape``, summed over
    the axes it was broadcast along: (N, *shape)."""
    lead = r.ndim - 1 - len(shape)
    if lead:
        r = r.sum(axis=tuple(range(1, 1 + lead)))
    axes = tuple(1 + i for i, s in enumerate(shape) if s == 1 and r.shape[1 + i] != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r


class AddReference:
    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.shapes = [tuple(graph[i].shape) for i in node.inputs]

    def forward(self, inputs):
        out = inputs[0] + inputs[1]
        for t in inputs[2:]:
            out += t
        s = None if self.rule.kind == "pass" else stabilize(out, self.rule.stabilizer, self.rule.guard)
        return out, (inputs, s)

    def relevance(self, ctx, R):
        xs, s = ctx
        if self.rule.kind == "pass":
            return [unbroadcast(np.broadcast_to(R / len(xs), R.shape), sh) for sh in self.shapes]
        g = R / s
        return [unbroadcast(x * g, sh) for x, sh in zip(xs, self.shapes)]


class AddSpec(OpSpec):
    name = "add"
    rules = ("norm", "pass")
    doc = "sum of inputs (broadcast per sample; residual add, biases); Norm (default) or Pass"

    def infer(self, node, in_shapes):
        if len(in_shapes) < 2:
            raise GraphError(f"{node.describe()}: needs at least two inputs")
        return broadcast_shape(node, in_shapes)

    def default_rule(self, graph, node, stabilizer):
        from ..rules import Norm

        return Norm(stabilizer)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)

    def reference(self, graph, node, rule):
        return AddReference(graph, node, rule)


#: Ops whose output is a gate when they produce an operand of a product.
_GATE_ACTIVATIONS = ("sigmoid", "hardsigmoid")
#: Ops a gate may pass through and stay a gate.
_GATE_ROUTING = ("reshape", "permute", "pad")


def _is_gate_source(graph, name: str) -> bool:
    n = graph[name]
    while n.op in _GATE_ROUTING:
        n = graph[n.inputs[0]]
    return n.op == "const" or (n.op == "activation" and n.attrs.get("kind") in _GATE_ACTIVATIONS)


def gate_operand(graph, node):
    """Which operand of the product ``node`` is its gate: 0, 1, or None.

    An operand is a gate candidate when it is a constant or a sigmoid /
    hard-sigmoid output (seen through reshapes, permutes and pads), or when it is
    broadcast over the other (fewer elements: squeeze-excitation's per-channel
    scale, a layer-scale vector). One candidate is the gate; of two, the constant,
    else the broadcast one; None when that does not decide it (e.g. two sigmoid
    outputs of one shape)."""
    a, b = node.inputs
    sa, sb = (int(np.prod(graph[i].shape)) for i in (a, b))
    src = [_is_gate_source(graph, a), _is_gate_source(graph, b)]
    smaller = [sa < sb, sb < sa]
    cand = [src[i] or smaller[i] for i in (0, 1)]
    if cand[0] != cand[1]:
        return 0 if cand[0] else 1
    if not cand[0]:
        return None
    const = [graph[i].op == "const" for i in (a, b)]
    if const[0] != const[1]:
        return 0 if const[0] else 1
    if smaller[0] != smaller[1]:
        return 0 if smaller[0] else 1
    return None


def kept_operand(node, rule, find_gate, why: str, instead: str) -> int:
    """The operand (0 or 1) of a two-operand product that gets the relevance when the
    other one, the gate, is held constant: the rule's ``gate`` or, when it is None, the
    one ``find_gate()`` finds in the graph; the error says ``why`` it found none and
    names the rule to use ``instead``."""
    gate = rule.gate if rule.gate is not None else find_gate()
    if gate is None:
        from ..rules import RuleError

        name = type(rule).__name__
        raise RuleError(f"{node.describe()}: {name}() cannot tell which operand is the gate ({why}); give "
                        f"{name}(gate=0) or {name}(gate=1), or use {instead}()")
    return 1 - gate


class MulReference:
    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.shapes = [tuple(graph[i].shape) for i in node.inputs]
        self.keep = None  # the operand that gets the relevance (Gate)
        if rule.kind == "gate":
            self.keep = kept_operand(node, rule, lambda: gate_operand(graph, node),
                                     "neither or both are sigmoid outputs, constants or broadcast", "Uniform")

    def forward(self, inputs):
        return inputs[0] * inputs[1], None

    def relevance(self, ctx, R):
        if self.keep is not None:
            zero = np.zeros((R.shape[0],) + self.shapes[1 - self.keep], dtype=R.dtype)
            out = [None, None]
            out[self.keep] = unbroadcast(R, self.shapes[self.keep])
            out[1 - self.keep] = zero
            return out
        return [unbroadcast(R / 2, sh) for sh in self.shapes]


class MulSpec(OpSpec):
    name = "mul"
    rules = ("gate", "uniform")
    doc = "product of two tensors (broadcast per sample); Gate (default when one operand gates) or Uniform"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 2)
        return broadcast_shape(node, in_shapes)

    def default_rule(self, graph, node, stabilizer):
        from ..rules import Gate, Uniform

        gate = gate_operand(graph, node)
        return Uniform() if gate is None else Gate(gate)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)

    def silent_inputs(self, graph, node, rule):
        keep = MulReference(graph, node, rule).keep
        return () if keep is None else (1 - keep,)

    def reference(self, graph, node, rule):
        return MulReference(graph, node, rule)


class _ConstRef:
    def __init__(self, graph, node, rule):
        self.value = np.asarray(node.params["value"], dtype=np.float64)[None]

    def forward(self, inputs):
        return self.value, None

    def relevance(self, ctx, R):
        return []


class ConstSpec(OpSpec):
    name = "const"
    doc = "a constant operand (parameter or number), per sample"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 0)
        v = node.params.get("value")
        if v is None:
            raise GraphError(f"{node.describe()}: a const node needs a 'value' parameter")
        if not np.all(np.isfinite(v)):
            raise GraphError(f"{node.describe()}: constant has NaN or Inf values")
        return tuple(np.shape(v))

    def nonnegative(self, node, inputs_nonneg):
        return bool(np.all(np.asarray(node.params["value"]) >= 0))

    def reference(self, graph, node, rule):
        return _ConstRef(graph, node, rule)


register_op(AddSpec())
register_op(MulSpec())
register_op(ConstSpec())
