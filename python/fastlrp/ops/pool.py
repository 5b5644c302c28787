"""Pooling (max, average, adaptive average) and upsampling, 1-d and 2-d.

``maxpool``           attrs ``dims``, ``kernel``, ``stride``, ``padding`` (pairs;
                      padded positions never win), ``dilation``, ``ceil_mode``.
``avgpool``           attrs ``dims``, ``kernel``, ``stride``, ``padding`` (pairs),
                      ``ceil_mode``, ``count_include_pad``, ``divisor_override``.
``adaptive_avgpool``  attrs ``dims``, ``output_size``; a global average pool is
                      ``output_size = (1,) * dims``.
``upsample``          attrs ``dims``, ``size`` (output spatial size), ``mode``
                      (``"nearest"`` or ``"linear"``: bilinear in 2-d),
                      ``align_corners``, ``scale`` (per axis: the input/output
                      coordinate ratio, None for ``in / out``; PyTorch uses
                      ``1 / scale_factor`` when a scale factor is given).

Max pooling routes relevance to each window's first arg-max (PyTorch's
gradient) or, with the Norm rule, to every input of the window in proportion to
its value. Average pooling and upsampling are per-channel linear maps,
separable per axis (:func:`separable_matrices`): the Norm rule gives each input
its share of each output (for upsampling, the epsilon rule on the interpolation
weights), Flat spreads relevance over each output's taps, and relevance never
crosses channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, check_window, need_inputs, pass_keeps_shape, register_op, stabilize

__all__ = ["Pool2dGeometry", "avgpool_matrices", "pool2d_geometry", "pool_output_length", "separable_matrices",
           "upsample_matrix", "window_table"]


def pool_output_length(length: int, kernel: int, stride: int, pad: tuple, dilation: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, with PyTorch's ceil rule.

    In ceil mode, the last window must start inside the input or the left
    padding (it may not start in the right padding), as in PyTorch.
    """
    eff = dilation * (kernel - 1) + 1
    span = length + pad[0] + pad[1] - eff
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= length + pad[0]:
            out -= 1
    else:
        out = span // stride + 1
    return out


def window_table(length, kernel, stride, pad, dilation, out_len):
    """Per output position: the input indices of its window (-1 where padded)."""
    starts = np.arange(out_len) * stride - pad[0]
    idx = starts[:, None] + np.arange(kernel)[None, :] * dilation
    return np.where((idx >= 0) & (idx < length), idx, -1)


def _avg_matrix(length, kernel, stride, pad, out_len, count_include_pad):
    """Averaging along one axis as a 0/1 matrix (out_len, length), and the
    per-position window size counted as PyTorch counts it."""
    S = np.zeros((out_len, length))
    size_pad = np.zeros(out_len)
    size_in = np.zeros(out_len)
    for o in range(out_len):
        start = o * stride - pad[0]
        end = min(start + kernel, length + pad[1])
        size_pad[o] = end - start
        s, e = max(start, 0), min(end, length)
        S[o, s:e] = 1.0
        size_in[o] = e - s
    return S, (size_pad if count_include_pad else size_in)


def _adaptive_matrix(length, out_len):
    S = np.zeros((out_len, length))
    for o in range(out_len):
        s = (o * length) // out_len
        e = -(-((o + 1) * length) // out_len)
        S[o, s:e] = 1.0 / (e - s)
    return S


def avgpool_matrices(in_shape: tuple, node) -> list:
    """An average pool (fixed or adaptive) as one float64 matrix per spatial axis,
    ``(out_len, in_len)``: ``out[c] = A_h x[c] A_w^T`` (2-d) or ``A x[c]`` (1-d)."""
    a = node.attrs
    d = a["dims"]
    if node.op == "adaptive_avgpool":
        return [_adaptive_matrix(in_shape[1 + i], node.shape[1 + i]) for i in range(d)]
    mats, sizes = [], []
    for i in range(d):
        S, size = _avg_matrix(in_shape[1 + i], a["kernel"][i], a["stride"][i], a["padding"][i], node.shape[1 + i],
                              a["count_include_pad"])
        mats.append(S)
        sizes.append(size)
    if a.get("divisor_override"):
        mats[0] = mats[0] / a["divisor_override"]
    else:
        for S, size in zip(mats, sizes):
            S /= size[:, None]
    return mats


def upsample_matrix(length, out_len, mode, align_corners, scale=None):
    """PyTorch's interpolation along one axis as a matrix (out_len, length)."""
    S = np.zeros((out_len, length))
    dst = np.arange(out_len, dtype=np.float64)
    if align_corners and mode == "linear":
        src = dst * ((length - 1) / (out_len - 1) if out_len > 1 else 0.0)
    else:
        ratio = length / out_len if scale is None else float(scale)
        src = np.floor(dst * ratio) if mode == "nearest" else np.maximum((dst + 0.5) * ratio - 0.5, 0.0)
    if mode == "nearest":
        S[np.arange(out_len), np.minimum(src.astype(np.int64), length - 1)] = 1.0
        return S
    i0 = np.minimum(np.floor(src).astype(np.int64), length - 1)
    i1 = np.minimum(i0 + 1, length - 1)
    w1 = src - i0
    np.add.at(S, (np.arange(out_len), i0), 1.0 - w1)
    np.add.at(S, (np.arange(out_len), i1), w1)
    return S


def separable_matrices(in_shape: tuple, node) -> list:
    """The per-axis matrices of a per-channel separable linear map: an average pool
    (:func:`avgpool_matrices`) or an upsampling (:func:`upsample_matrix`)."""
    if node.op != "upsample":
        return avgpool_matrices(in_shape, node)
    a = node.attrs
    scales = a.get("scale") or (None,) * a["dims"]
    return [upsample_matrix(in_shape[1 + i], node.shape[1 + i], a["mode"], bool(a.get("align_corners")), scales[i])
            for i in range(a["dims"])]


@dataclass(frozen=True)
class Pool2dGeometry:
    """A 1-d or 2-d max pool as a 2-d window over (C, H, W) images (left/top padding only:
    the output size fixes the rest)."""

    C: int
    H: int
    W: int
    kernel: tuple
    stride: tuple
    pad: tuple  # (top, left)
    dilation: tuple
    OH: int
    OW: int


def pool2d_geometry(graph, node) -> Pool2dGeometry:
    a = node.attrs
    ins = tuple(graph[node.inputs[0]].shape)
    d = a["dims"]
    dil = tuple(a.get("dilation", (1,) * d))
    if d == 1:
        return Pool2dGeometry(ins[0], 1, ins[1], (1, a["kernel"][0]), (1, a["stride"][0]), (0, a["padding"][0][0]),
                              (1, dil[0]), 1, node.shape[1])
    return Pool2dGeometry(*ins, tuple(a["kernel"]), tuple(a["stride"]), (a["padding"][0][0], a["padding"][1][0]),
                          dil, node.shape[1], node.shape[2])


# --------------------------------------------------------------------------------------
# reference implementations
# --------------------------------------------------------------------------------------
class AvgPoolReference:
    """Average pooling as separable per-axis matrices; Norm or Flat per channel."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.mats = separable_matrices(graph[node.inputs[0]].shape, node)

    def _apply(self, x, transpose=False):
        mats = [m.T if transpose else m for m in self.mats]
        if len(mats) == 1:
            return np.einsum("ncl,ol->nco", x, mats[0])
        return np.einsum("nchw,oh,pw->ncop", x, mats[0], mats[1])

    def forward(self, inputs):
        x = inputs[0]
        return self._apply(x), x

    def relevance(self, x, R):
        r = self.rule
        if r.kind == "pass":  # a pool that keeps the shape (the rule check refuses the others)
            return [R]
        if r.kind == "flat":
            ones = np.ones_like(x)
            return [self._apply(R / stabilize(self._apply(ones), r.stabilizer), transpose=True)]
        z = self._apply(x)
        return [x * self._apply(R / stabilize(z, r.stabilizer, r.guard), transpose=True)]


class MaxPoolReference:
    """Max pooling; relevance to each window's first arg-max, or proportional (Norm)."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        a = node.attrs
        in_shape = graph[node.inputs[0]].shape
        self.d = a["dims"]
        self.tables = [
            window_table(in_shape[1 + i], a["kernel"][i], a["stride"][i], a["padding"][i],
                         a.get("dilation", (1,) * self.d)[i], node.shape[1 + i])
            for i in range(self.d)
        ]

    def _windows(self, x):
        # gather every window (padding = -inf so it never wins), in float64 whatever x's
        # dtype: the proportional rule divides by window sums that can nearly cancel
        if self.d == 1:
            (t,) = self.tables
            xp = np.concatenate([x, np.full(x.shape[:-1] + (1,), -np.inf)], axis=-1)
            return xp[..., t]  # (N, C, OL, K)
        th, tw = self.tables
        H, W = x.shape[-2:]
        xp = np.full(x.shape[:-2] + (H + 1, W + 1), -np.inf)
        xp[..., :H, :W] = x
        win = xp[:, :, th[:, :, None, None], tw[None, None, :, :]]  # (N,C,OH,KH,OW,KW)
        N, C, OH, KH, OW, KW = win.shape
        return win.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, OH, OW, KH * KW)

    def forward(self, inputs):
        x = inputs[0]
        win = self._windows(x)
        arg = np.argmax(win, axis=-1)
        return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], (x, arg)

    def _flat_index(self, x, shape):
        if self.d == 1:
            (t,) = self.tables
            return np.broadcast_to(t, shape)
        th, tw = self.tables
        KW = tw.shape[1]
        k = np.arange(th.shape[1] * KW)
        ih = th[:, None, k // KW]  # (OH, 1, K)
        iw = tw[None, :, k % KW]  # (1, OW, K)
        return np.where((ih < 0) | (iw < 0), -1, ih * x.shape[3] + iw)

    def _proportional(self, x, R):
        # the Norm rule on the window sums: padding taps (-inf) count as 0
        win = self._windows(x)
        win = np.where(np.isneginf(win), 0.0, win)
        g = R / stabilize(win.sum(axis=-1), self.rule.stabilizer, self.rule.guard)
        shares = win * g[..., None]  # (N, C, *out, K)
        N, C = x.shape[:2]
        out = np.zeros((N, C, int(np.prod(x.shape[2:]))))
        flat = self._flat_index(x, shares.shape[2:])
        valid = np.broadcast_to(flat >= 0, shares.shape)
        idx = np.broadcast_to(flat, shares.shape)
        n_idx = np.broadcast_to(np.arange(N).reshape((N,) + (1,) * (shares.ndim - 1)), shares.shape)
        c_idx = np.broadcast_to(np.arange(C).reshape((1, C) + (1,) * (shares.ndim - 2)), shares.shape)
        np.add.at(out, (n_idx[valid], c_idx[valid], idx[valid]), shares[valid])
        return [out.reshape(x.shape)]

    def relevance(self, ctx, R):
        x, arg = ctx
        if self.rule.kind == "norm":
            return self._proportional(x, R)
        shape = x.shape
        N, C = shape[:2]
        out = np.zeros((N, C, int(np.prod(shape[2:]))))
        if self.d == 1:
            (t,) = self.tables
            flat = t[np.arange(t.shape[0])[None, None, :], arg]
        else:
            th, tw = self.tables
            KW = tw.shape[1]
            ih = th[np.arange(th.shape[0])[None, None, :, None], arg // KW]
            iw = tw[np.arange(tw.shape[0])[None, None, None, :], arg % KW]
            flat = ih * shape[3] + iw
        n_idx = np.arange(N)[:, None, None] if self.d == 1 else np.arange(N)[:, None, None, None]
        c_idx = np.arange(C)[None, :, None] if self.d == 1 else np.arange(C)[None, :, None, None]
        np.add.at(out, (np.broadcast_to(n_idx, flat.shape), np.broadcast_to(c_idx, flat.shape), flat), R)
        return [out.reshape(shape)]


# --------------------------------------------------------------------------------------
# the specs
# --------------------------------------------------------------------------------------
def _need_spatial(node, ins, d):
    if len(ins) != d + 1:
        raise GraphError(f"{node.describe()}: input must have {d + 1} axes, got {ins}")


class _WindowPoolSpec(OpSpec):
    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        a = node.attrs
        ins = in_shapes[0]
        d = int(a["dims"])
        check_window(node, d, a["kernel"])
        _need_spatial(node, ins, d)
        pads = tuple((int(p), int(q)) for p, q in a["padding"])
        dil = a.get("dilation", (1,) * d)
        for i in range(d):
            if pads[i][0] > a["kernel"][i] // 2 or pads[i][1] > a["kernel"][i] // 2:
                raise GraphError(f"{node.describe()}: padding {pads[i]} exceeds half the kernel {a['kernel'][i]}")
        sp = [pool_output_length(ins[1 + i], a["kernel"][i], a["stride"][i], pads[i], dil[i],
                                 bool(a.get("ceil_mode", False))) for i in range(d)]
        for i in range(d):
            # a dilated window can fall entirely into the padding: its max would be -inf
            for o in range(sp[i]):
                taps = o * a["stride"][i] - pads[i][0] + dil[i] * np.arange(a["kernel"][i])
                if not np.any((taps >= 0) & (taps < ins[1 + i])):
                    raise GraphError(
                        f"{node.describe()}: output position {o} along spatial axis {i} has a window "
                        f"entirely in the padding (input {ins[1 + i]}, kernel {a['kernel'][i]}, "
                        f"dilation {dil[i]}, padding {pads[i]})"
                    )
        return (ins[0], *sp)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)


class MaxPoolSpec(_WindowPoolSpec):
    name = "maxpool"
    rules = ("winner", "norm")
    doc = "max pooling; winner-takes-all (default) or proportional (Norm)"

    def default_rule(self, graph, node, stabilizer):
        from ..rules import WinnerTakesAll

        return WinnerTakesAll()

    def reference(self, graph, node, rule):
        return MaxPoolReference(graph, node, rule)


class _AvgSpec:
    rules = ("norm", "flat", "pass")

    def type_keys(self, node):
        return (node.op, "avgpool")

    def default_rule(self, graph, node, stabilizer):
        from ..rules import Norm

        return Norm(stabilizer)

    def check_rule(self, graph, node, rule):
        pass_keeps_shape(graph, node, rule)

    def nonnegative(self, node, inputs_nonneg):
        return all(inputs_nonneg)

    def reference(self, graph, node, rule):
        return AvgPoolReference(graph, node, rule)


class AvgPoolSpec(_AvgSpec, _WindowPoolSpec):
    name = "avgpool"
    doc = "average pooling; Norm per channel (default) or Flat"


class AdaptiveAvgPoolSpec(_AvgSpec, OpSpec):
    name = "adaptive_avgpool"
    doc = "adaptive / global average pooling; Norm per channel (default) or Flat"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        d = int(node.attrs["dims"])
        _need_spatial(node, in_shapes[0], d)
        return (in_shapes[0][0], *node.attrs["output_size"])


class UpsampleSpec(_AvgSpec, OpSpec):
    """The same per-channel separable map as the average pools (its own matrices)."""

    name = "upsample"
    rules = ("norm", "flat")
    doc = "nearest / (bi)linear upsampling, per channel; Norm (the epsilon rule on the weights, default) or Flat"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        a = node.attrs
        d = int(a["dims"])
        _need_spatial(node, in_shapes[0], d)
        if a.get("mode") not in ("nearest", "linear"):
            raise GraphError(f"{node.describe()}: mode must be 'nearest' or 'linear', got {a.get('mode')!r}")
        size = tuple(int(v) for v in a["size"])
        if len(size) != d or any(v < 1 for v in size):
            raise GraphError(f"{node.describe()}: size {a['size']} must be {d} positive lengths")
        scale = a.get("scale")
        if scale is not None and (len(scale) != d or any(v is not None and not float(v) > 0 for v in scale)):
            raise GraphError(f"{node.describe()}: scale {scale} must be {d} positive ratios (or None)")
        a["size"] = size
        return (in_shapes[0][0], *size)

    def type_keys(self, node):
        return ("upsample",)  # not an average pool for composites


register_op(MaxPoolSpec())
register_op(AvgPoolSpec())
register_op(AdaptiveAvgPoolSpec())
register_op(UpsampleSpec())
