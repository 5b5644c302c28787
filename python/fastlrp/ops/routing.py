"""Ops that move values without mixing them: relevance is routed back unchanged.

``input``    the model input; attrs ``shape``: the per-sample input shape.
``reshape``  attrs ``shape``: the per-sample output shape (flatten, view).
``permute``  attrs ``perm``: per-sample axis permutation.
``concat``   attrs ``axis``: per-sample axis (0 = channels).
``slice``    attrs ``axis`` (per-sample), ``start``, ``stop``, ``step`` (> 0): one
             part of a tensor (``x[:, a:b]``, ``chunk``, ``split``, ``unbind``);
             relevance goes back to the positions it came from, the rest get none.
``pad``      attrs ``padding``: one ``(before, after)`` pair per per-sample axis
             (channels first), ``value`` (default 0.0). Negative amounts crop, so
             zero padding and cropping (Keras ZeroPadding/Cropping, ``F.pad``,
             ``nn.ZeroPad2d``) are one op. Relevance arriving at padded positions
             has no input to go to and is absorbed (the relevance report shows it);
             cropped positions get none.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, need_inputs, register_op

__all__ = ["pad_slices"]


class _Routing(OpSpec):
    rules = ("pass",)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)


class _InputRef:
    def __init__(self, graph, node, rule):
        pass

    def forward(self, inputs):
        return inputs[0], None

    def relevance(self, ctx, R):
        return []


class InputSpec(OpSpec):
    name = "input"
    doc = "the model input"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 0)
        return tuple(node.attrs.get("shape", node.shape))

    def reference(self, graph, node, rule):
        return _InputRef(graph, node, rule)


class _ReshapeRef:
    def __init__(self, graph, node, rule):
        self.in_shape = tuple(graph[node.inputs[0]].shape)
        self.out_shape = tuple(node.shape)

    def forward(self, inputs):
        x = inputs[0]
        return x.reshape((x.shape[0],) + self.out_shape), None

    def relevance(self, ctx, R):
        return [R.reshape((R.shape[0],) + self.in_shape)]


class ReshapeSpec(_Routing):
    name = "reshape"
    doc = "per-sample reshape (flatten, view)"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = in_shapes[0]
        shape = tuple(node.attrs["shape"])
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(math.prod(ins) // known if s == -1 else s for s in shape)
            node.attrs["shape"] = shape
        if math.prod(shape) != math.prod(ins):
            raise GraphError(f"{node.describe()}: cannot reshape {ins} to {shape}")
        return shape

    def reference(self, graph, node, rule):
        return _ReshapeRef(graph, node, rule)


class _PermuteRef:
    def __init__(self, graph, node, rule):
        perm = tuple(int(p) for p in node.attrs["perm"])
        self.fwd_axes = (0,) + tuple(p + 1 for p in perm)
        self.bwd_axes = (0,) + tuple(int(p) + 1 for p in np.argsort(perm))

    def forward(self, inputs):
        return inputs[0].transpose(self.fwd_axes), None

    def relevance(self, ctx, R):
        return [R.transpose(self.bwd_axes)]


class PermuteSpec(_Routing):
    name = "permute"
    doc = "per-sample axis permutation"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = in_shapes[0]
        perm = tuple(node.attrs["perm"])
        if sorted(perm) != list(range(len(ins))):
            raise GraphError(f"{node.describe()}: permutation {perm} does not fit shape {ins}")
        return tuple(ins[p] for p in perm)

    def reference(self, graph, node, rule):
        return _PermuteRef(graph, node, rule)


class _ConcatRef:
    def __init__(self, graph, node, rule):
        self.axis = node.attrs["axis"] + 1
        self.splits = np.cumsum([graph[i].shape[node.attrs["axis"]] for i in node.inputs])[:-1]

    def forward(self, inputs):
        n = max(x.shape[0] for x in inputs)  # a constant operand (a class token) has batch size 1
        return np.concatenate([np.broadcast_to(x, (n,) + x.shape[1:]) for x in inputs], axis=self.axis), None

    def relevance(self, ctx, R):
        return np.split(R, self.splits, axis=self.axis)


class ConcatSpec(_Routing):
    name = "concat"
    doc = "concatenation along a per-sample axis"

    def infer(self, node, in_shapes):
        if len(in_shapes) < 1:
            raise GraphError(f"{node.describe()}: needs inputs")
        ax = int(node.attrs["axis"])
        rank = len(in_shapes[0])
        if ax < 0:
            ax += rank
            node.attrs["axis"] = ax
        for s in in_shapes:
            if len(s) != rank or any(s[i] != in_shapes[0][i] for i in range(rank) if i != ax):
                raise GraphError(f"{node.describe()}: cannot concatenate shapes {in_shapes} along axis {ax}")
        return tuple(sum(s[ax] for s in in_shapes) if i == ax else in_shapes[0][i] for i in range(rank))

    def reference(self, graph, node, rule):
        return _ConcatRef(graph, node, rule)


class _SliceRef:
    def __init__(self, graph, node, rule):
        a = node.attrs
        self.index = (slice(None),) * (1 + a["axis"]) + (slice(a["start"], a["stop"], a["step"]),)
        self.in_shape = tuple(graph[node.inputs[0]].shape)

    def forward(self, inputs):
        return np.ascontiguousarray(inputs[0][self.index]), None

    def relevance(self, ctx, R):
        out = np.zeros((R.shape[0],) + self.in_shape, dtype=R.dtype)
        out[self.index] = R
        return [out]


class SliceSpec(_Routing):
    name = "slice"
    doc = "a part of one per-sample axis (x[:, a:b], chunk, split, unbind)"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = in_shapes[0]
        a = node.attrs
        try:
            axis, step = int(a["axis"]), int(a.get("step", 1))
        except (TypeError, ValueError, KeyError):
            raise GraphError(f"{node.describe()}: a slice needs an integer axis and step, got {a!r}") from None
        if not -len(ins) <= axis < len(ins) or step < 1:
            raise GraphError(f"{node.describe()}: axis {axis} / step {step} do not fit shape {ins} (step >= 1)")
        axis %= len(ins)
        start, stop, step = slice(a.get("start"), a.get("stop"), step).indices(ins[axis])
        if stop <= start:
            raise GraphError(f"{node.describe()}: slice {a.get('start')}:{a.get('stop')} of axis {axis} (length "
                             f"{ins[axis]}) is empty")
        a.update(axis=axis, start=start, stop=stop, step=step)
        return tuple(len(range(start, stop, step)) if i == axis else s for i, s in enumerate(ins))

    def reference(self, graph, node, rule):
        return _SliceRef(graph, node, rule)


def pad_slices(padding) -> tuple:
    """For per-axis ``(before, after)`` amounts (negative crops): the slices that
    cut the kept part of the input, the non-negative pad widths applied after
    that, and the slices of the output where the kept input lands."""
    crop, widths, where = [], [], []
    for b, a in padding:
        crop.append(slice(max(-b, 0), None if a >= 0 else a))
        widths.append((max(b, 0), max(a, 0)))
        where.append(slice(max(b, 0), None if a <= 0 else -a))
    return tuple(crop), tuple(widths), tuple(where)


class _PadRef:
    def __init__(self, graph, node, rule):
        self.crop, self.widths, self.where = pad_slices(node.attrs["padding"])
        self.value = float(node.attrs.get("value", 0.0))
        self.in_shape = tuple(graph[node.inputs[0]].shape)

    def forward(self, inputs):
        x = inputs[0][(slice(None),) + self.crop]
        return np.pad(x, ((0, 0),) + self.widths, constant_values=self.value), None

    def relevance(self, ctx, R):
        kept = R[(slice(None),) + self.where]
        out = np.zeros((R.shape[0],) + self.in_shape, dtype=R.dtype)
        out[(slice(None),) + self.crop] = kept
        return [out]


class PadSpec(OpSpec):
    name = "pad"
    rules = ("pass",)
    doc = "constant padding and cropping (negative amounts) of per-sample axes"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        ins = in_shapes[0]
        try:
            pads = tuple((int(b), int(a)) for b, a in node.attrs["padding"])
        except (TypeError, ValueError):
            raise GraphError(f"{node.describe()}: padding must be (before, after) pairs, "
                             f"got {node.attrs['padding']!r}") from None
        if len(pads) != len(ins):
            raise GraphError(f"{node.describe()}: padding {pads} has {len(pads)} pairs for an input with "
                             f"{len(ins)} axes {ins}")
        value = float(node.attrs.get("value", 0.0))
        if not math.isfinite(value):
            raise GraphError(f"{node.describe()}: padding value must be finite, got {value}")
        node.attrs["padding"] = pads
        out = tuple(s + b + a for s, (b, a) in zip(ins, pads))
        for s, (b, a) in zip(ins, pads):
            if -min(b, 0) - min(a, 0) >= s:
                raise GraphError(f"{node.describe()}: cropping {(b, a)} leaves nothing of an axis of length {s}")
        return out

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg) and float(node.attrs.get("value", 0.0)) >= 0

    def reference(self, graph, node, rule):
        return _PadRef(graph, node, rule)


for _spec in (InputSpec(), ReshapeSpec(), PermuteSpec(), ConcatSpec(), SliceSpec(), PadSpec()):
    register_op(_spec)
