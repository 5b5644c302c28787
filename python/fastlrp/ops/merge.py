"""``add``: two or more inputs of one shape, summed (residual connections).

Norm rule (the default): each summand gets its share of the sum,
``R_i = x_i R / s(sum)``; Pass splits relevance evenly. ``s(sum)`` does not
depend on the target, so it is computed once in the forward pass and shared.
"""

from __future__ import annotations

from ..errors import GraphError
from .spec import OpSpec, register_op, stabilize


class AddReference:
    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule

    def forward(self, inputs):
        out = inputs[0].copy()
        for t in inputs[1:]:
            out += t
        s = None if self.rule.kind == "pass" else stabilize(out, self.rule.stabilizer)
        return out, (inputs, s)

    def relevance(self, ctx, R):
        xs, s = ctx
        if self.rule.kind == "pass":
            return [R / len(xs) for _ in xs]
        g = R / s
        return [x * g for x in xs]


class AddSpec(OpSpec):
    name = "add"
    rules = ("norm", "pass")
    doc = "sum of inputs of one shape (residual add); Norm (default) or Pass"

    def infer(self, node, in_shapes):
        if len(in_shapes) < 2:
            raise GraphError(f"{node.describe()}: needs at least two inputs")
        if any(s != in_shapes[0] for s in in_shapes):
            raise GraphError(f"{node.describe()}: summands have different shapes {in_shapes} "
                             "(broadcasting is not supported)")
        return in_shapes[0]

    def default_rule(self, node, stabilizer):
        from ..rules import Norm

        return Norm(stabilizer)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)

    def reference(self, graph, node, rule):
        return AddReference(graph, node, rule)


register_op(AddSpec())
