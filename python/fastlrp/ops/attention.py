"""Attention: the product of two activations and a softmax inside a model.

Scaled dot-product attention is not one op: the importers lower it
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, the explicit
``q @ k.transpose(-2, -1) * scale -> softmax -> @ v``, einsum forms) to

    scores = matmul(q, k, transpose_b=True) * scale (+ bias or mask)
    A      = softmax(scores, axis=-1)
    out    = matmul(A, v)

so every form, and Swin's relative position bias added to the scores, meets the
same two ops and the same rules, each node addressable by name in a composite.

``matmul``   two inputs ``a`` (..., m, k) and ``b`` (..., k, n), or (..., n, k) with
             attrs ``transpose_b=True``; the leading axes broadcast (per sample, as
             NumPy's matmul). Rules: :class:`~fastlrp.rules.UniformEpsilon` (the
             default; AttnLRP: the epsilon rule of the bilinear map, each operand
             gets half) and :class:`~fastlrp.rules.GateEpsilon` (CP-LRP: one operand,
             the attention weights, held constant; the epsilon rule of the other's
             linear map).
``softmax``  attrs ``axis`` (per-sample). Rules: :class:`~fastlrp.rules.Taylor` (the
             default; AttnLRP's softmax rule ``R_x = x * (R - y * sum R)``) and Pass.

The references keep their inputs' dtype (float64 oracle, float32 fallback); the
products are NumPy matmuls, i.e. batched BLAS GEMMs.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from .merge import kept_operand, unbroadcast
from .spec import OpSpec, need_inputs, register_op, stabilize

__all__ = ["attention_weights_operand", "matmul_operands"]

#: Ops attention weights may pass through between their softmax and the product with the values.
_WEIGHT_ROUTING = ("reshape", "permute", "slice", "pad")


def attention_weights_operand(graph, node):
    """Which operand of the ``matmul`` node is attention weights (computed by a
    ``softmax``, seen through reshapes, permutes, slices and pads): 0, 1, or None."""
    found = []
    for i, name in enumerate(node.inputs):
        n = graph[name]
        while n.op in _WEIGHT_ROUTING:
            n = graph[n.inputs[0]]
        if n.op == "softmax" or (n.op == "activation" and n.attrs.get("kind") == "softmax"):
            found.append(i)
    return found[0] if len(found) == 1 else None


def matmul_operands(a: np.ndarray, b: np.ndarray, transpose_b: bool) -> tuple:
    """``(a, b)`` of a batched product ``a @ b`` (``b`` swapped in its last two axes when
    ``transpose_b``), both C-contiguous."""
    return np.ascontiguousarray(a), np.ascontiguousarray(np.swapaxes(b, -1, -2) if transpose_b else b)


def _t(m: np.ndarray) -> np.ndarray:
    """The matrices of a stack transposed, C-contiguous: NumPy's float32 matmul of
    C-contiguous stacks runs 3x faster than of transposed views (measured on heads of
    ViT-B/16, (4, 12, 197, 64))."""
    return np.ascontiguousarray(np.swapaxes(m, -1, -2))


class MatmulReference:
    """``matmul``: a batched product of stacks of matrices with NumPy's broadcasting
    (``np.matmul``). The compiled CPU backend subclasses it for the rule's set-up (``tb``,
    ``shapes``, ``keep``) and runs forward and relevance on its own batched product."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.tb = bool(node.attrs.get("transpose_b", False))
        self.shapes = [tuple(graph[i].shape) for i in node.inputs]
        self.keep = None  # GateEpsilon: the operand that gets the relevance
        if rule.kind == "gate_epsilon":
            self.keep = kept_operand(node, rule, lambda: attention_weights_operand(graph, node),
                                     "neither or both are softmax outputs", "UniformEpsilon")

    def forward(self, inputs):
        a, b = matmul_operands(inputs[0], inputs[1], self.tb)
        z = np.matmul(a, b)
        return z, (a, b, self.denominator(z))

    def denominator(self, z):
        """What ``relevance`` divides by, kept in ctx for every target: ``s(z)``, doubled for
        UniformEpsilon (each operand gets half)."""
        s = stabilize(z, self.rule.epsilon)
        return s if self.keep is not None else s * 2

    def quotient(self, R, s):
        """``g = R / s`` for the kept ``s = denominator(z)``."""
        return np.divide(R, s, order="C")

    def relevance(self, ctx, R):
        a, b, s = ctx
        g = self.quotient(R, s)
        out = [None, None]
        if self.keep != 1:
            out[0] = unbroadcast(a * np.matmul(g, _t(b)), self.shapes[0])
        if self.keep != 0:
            rb = b * np.matmul(_t(a), g)
            out[1] = unbroadcast(np.swapaxes(rb, -1, -2) if self.tb else rb, self.shapes[1])
        for i in (0, 1):
            if out[i] is None:
                out[i] = np.zeros((R.shape[0],) + self.shapes[i], dtype=R.dtype)
        return out


class MatmulSpec(OpSpec):
    name = "matmul"
    rules = ("uniform_epsilon", "gate_epsilon")
    doc = ("product of two activations a @ b (batched, broadcast leading axes; attention); UniformEpsilon (default) "
           "or GateEpsilon")

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 2)
        sa, sb = (tuple(s) for s in in_shapes)
        tb = bool(node.attrs.get("transpose_b", False))
        node.attrs["transpose_b"] = tb
        if len(sa) < 2 or len(sb) < 2:
            raise GraphError(f"{node.describe()}: both operands need at least 2 per-sample axes, got {sa} and {sb}")
        k_b, n = (sb[-1], sb[-2]) if tb else (sb[-2], sb[-1])
        if sa[-1] != k_b:
            raise GraphError(f"{node.describe()}: inner sizes differ: {sa} @ {sb}" + (" (b transposed)" if tb else ""))
        try:
            lead = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
        except ValueError:
            raise GraphError(f"{node.describe()}: leading axes of {sa} and {sb} do not broadcast") from None
        return lead + (sa[-2], n)

    def default_rule(self, graph, node, stabilizer):
        from ..rules import UniformEpsilon

        return UniformEpsilon(stabilizer)

    def check_rule(self, graph, node, rule):
        if rule.kind == "gate_epsilon":
            MatmulReference(graph, node, rule)  # raises when the gate cannot be found

    def silent_inputs(self, graph, node, rule):
        keep = MatmulReference(graph, node, rule).keep
        return () if keep is None else (1 - keep,)

    def reference(self, graph, node, rule):
        return MatmulReference(graph, node, rule)


class SoftmaxReference:
    def __init__(self, graph, node, rule):
        self.axis = 1 + int(node.attrs["axis"])
        self.rule = rule

    def forward(self, inputs):
        x = inputs[0]
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        y = e / e.sum(axis=self.axis, keepdims=True)
        return y, (x, y)

    def relevance(self, ctx, R):
        if self.rule.kind == "pass":
            return [R]
        x, y = ctx
        return [x * (R - y * R.sum(axis=self.axis, keepdims=True))]


class SoftmaxSpec(OpSpec):
    name = "softmax"
    rules = ("taylor", "pass")
    doc = "softmax along one per-sample axis inside a model (attention weights); Taylor (AttnLRP, default) or Pass"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = tuple(in_shapes[0])
        try:
            axis = int(node.attrs["axis"])
        except (KeyError, TypeError, ValueError):
            raise GraphError(f"{node.describe()}: a softmax needs an integer axis, got {node.attrs.get('axis')!r}") \
                from None
        if not ins or not -len(ins) <= axis < len(ins):
            raise GraphError(f"{node.describe()}: axis {axis} does not fit the per-sample shape {ins}")
        node.attrs["axis"] = axis % len(ins)
        return ins

    def default_rule(self, graph, node, stabilizer):
        from ..rules import Taylor

        return Taylor()

    def nonnegative(self, node, inputs_nonneg):
        return True

    def reference(self, graph, node, rule):
        return SoftmaxReference(graph, node, rule)


register_op(MatmulSpec())
register_op(SoftmaxSpec())
