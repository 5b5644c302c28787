"""``layernorm``: layer normalisation (and its RMS variant) over some per-sample axes.

attrs  ``axes``: the per-sample axes normalised (channels first: ``(0,)`` is a
       ConvNeXt-style LayerNorm2d, the last axis a transformer's); ``eps``;
       ``rms`` (True: RMSNorm, no centring).
params ``weight``, ``bias`` (optional): arrays of the per-sample rank that
       broadcast against the input (size 1 on the axes not normalised).

``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` (biased variance;
RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * weight + bias``).

Rules (AttnLRP's treatment): the division by the standard deviation is held
constant, so the layer is the linear map ``z = J x + b`` with
``J = diag(weight / std) (I - 1/n)`` (RMSNorm: ``diag(weight / rms)``). Epsilon
(the default) applies the epsilon rule to that map, ``R_x = x * J^T [R / s(z)]``,
which conserves relevance when the bias is zero (or with ``zero_bias``); Pass
hands relevance through unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, need_inputs, register_op, stabilize


class LayerNormReference:
    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        a = node.attrs
        self.axes = tuple(1 + int(i) for i in a["axes"])  # with the batch axis
        self.eps = float(a.get("eps", 1e-5))
        self.rms = bool(a.get("rms", False))
        w, b = node.params.get("weight"), node.params.get("bias")
        self.w = None if w is None else np.asarray(w, np.float64)[None]
        self.b = None if b is None else np.asarray(b, np.float64)[None]

    def forward(self, inputs):
        x = inputs[0]
        c = x if self.rms else x - x.mean(axis=self.axes, keepdims=True)
        std = np.sqrt((c * c).mean(axis=self.axes, keepdims=True) + self.eps)
        y = c / std
        if self.w is not None:
            y = y * self.w
        if self.b is not None:
            y = y + self.b
        return y, (x, std, y)

    def relevance(self, ctx, R):
        x, std, y = ctx
        r = self.rule
        if r.kind == "pass":
            return [R]
        z = y - self.b if (self.b is not None and r.zero_bias) else y  # z = J x + b, or J x
        g = R / stabilize(z, r.epsilon, r.guard)
        g = g / std if self.w is None else g * self.w / std
        if not self.rms:  # the centring's transpose: subtract the mean over the normalised axes
            g = g - g.mean(axis=self.axes, keepdims=True)
        return [x * g]


class LayerNormSpec(OpSpec):
    name = "layernorm"
    rules = ("epsilon", "pass")
    doc = "layer normalisation / RMSNorm over per-sample axes; Epsilon with the std held constant (default) or Pass"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = in_shapes[0]
        a = node.attrs
        rank = len(ins)
        try:
            axes = tuple(sorted(int(i) % rank for i in a["axes"])) if rank else ()
        except (TypeError, ValueError):
            raise GraphError(f"{node.describe()}: axes must be integers, got {a.get('axes')!r}") from None
        if not axes or len(set(axes)) != len(axes):
            raise GraphError(f"{node.describe()}: axes {a.get('axes')} do not name distinct axes of shape {ins}")
        a["axes"] = axes
        eps = float(a.get("eps", 1e-5))
        if not math.isfinite(eps) or eps < 0:
            raise GraphError(f"{node.describe()}: eps must be a finite number >= 0, got {eps}")
        for k in ("weight", "bias"):
            p = node.params.get(k)
            if p is None:
                continue
            if p.ndim != rank or any(p.shape[i] not in (1, ins[i]) for i in range(rank)):
                raise GraphError(f"{node.describe()}: {k} of shape {p.shape} does not broadcast against the input "
                                 f"{ins} (give it the input's rank, size 1 on axes not normalised)")
        return ins

    def default_rule(self, graph, node, stabilizer):
        from ..rules import Epsilon

        return Epsilon(stabilizer)

    def reference(self, graph, node, rule):
        return LayerNormReference(graph, node, rule)


register_op(LayerNormSpec())
