"""Dense and convolution layers: the ops the parametric LRP rules act on.

``dense``  params ``weight`` (out, in), optional ``bias`` (out,); input ``(..., in)``:
           the layer acts on the last axis (a transformer's tokens, a Keras Dense on
           a sequence), output ``(..., out)``.
``conv``   attrs ``dims`` (1 or 2), ``stride``, ``dilation`` (tuples of length
           dims), ``padding`` (one ``(before, after)`` pair per spatial dim),
           ``groups``; params ``weight`` (out, in/groups, *kernel), optional
           ``bias`` (out,).
``conv_transpose``  the transposed convolution (U-Net decoders): the input-gradient
           of the ``conv`` with the same attrs and ``weight`` (in, out/groups,
           *kernel), PyTorch's layout; ``padding`` holds the pairs of that conv
           (PyTorch's ``(p, p + output_padding)``), ``output_size`` the spatial
           output; optional ``bias`` (out,).
           The same rules as ``conv`` (composites map it by ``"conv"`` too, as
           zennit does).

The reference writes every rule once, in terms of two functions of the layer:
``fwd(x, W, b)`` (the layer applied with modified inputs/weights) and
``bwd(g, W)`` (the transposed layer, the input-gradient ``W^T g``); the formulas
are docs/design.md section 2, term by term. Convolutions loop over kernel taps
with strided slices.

:func:`conv2d_geometry` lowers any dense or conv node to the one shape the
compiled kernels take: a 2-d convolution (a dense layer is a 1x1 conv over a
1x1 image, a 1-d conv a 2-d conv of height 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, check_window, need_inputs, pass_keeps_shape, register_op, stabilize

__all__ = [
    "PARAMETRIC_RULES",
    "Conv2dGeometry",
    "conv2d_geometry",
    "conv_forward",
    "conv_backward",
    "conv_output_length",
    "same_padding",
]

#: The rules of dense and conv layers (Pass routes relevance through unchanged).
PARAMETRIC_RULES = ("epsilon", "zplus", "alphabeta", "gamma", "zbox", "flat", "wsquare", "pass")


def conv_output_length(length: int, kernel: int, stride: int, pad: tuple, dilation: int) -> int:
    """Output length of a convolution along one axis (floor mode)."""
    eff = dilation * (kernel - 1) + 1
    return (length + pad[0] + pad[1] - eff) // stride + 1


def same_padding(length: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple:
    """TensorFlow/Keras "same" padding along one axis: ``(before, after)``.

    The output has ``ceil(length / stride)`` positions; an odd total goes to the end.
    """
    eff = dilation * (kernel - 1) + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + eff - length, 0)
    return (total // 2, total - total // 2)


def _check_bias(node, out: int) -> None:
    b = node.params.get("bias")
    if b is not None and b.shape != (out,):
        raise GraphError(f"{node.describe()}: bias must have shape ({out},), got {b.shape}")


# --------------------------------------------------------------------------------------
# reference arithmetic
# --------------------------------------------------------------------------------------
def _as2d(attrs: dict, W: np.ndarray):
    """A 1-d conv seen as a 2-d conv over a height-1 image."""
    if attrs["dims"] == 2:
        return attrs, W
    a = dict(attrs)
    a["stride"] = (1, attrs["stride"][0])
    a["dilation"] = (1, attrs["dilation"][0])
    a["padding"] = ((0, 0), tuple(attrs["padding"][0]))
    return a, W[:, :, None, :]


def conv_forward(x: np.ndarray, W: np.ndarray, b, attrs: dict) -> np.ndarray:
    """Cross-correlation, PyTorch semantics, x: (N, C, *S), W: (O, C/g, *K)."""
    one_d = attrs["dims"] == 1
    a, W = _as2d(attrs, W)
    if one_d:
        x = x[:, :, None, :]
    (pt, pb), (pl, pr) = a["padding"]
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    G = a["groups"]
    N, C, H, Wd = x.shape
    O, Cg, KH, KW = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd + pl + pr - dw * (KW - 1) - 1) // sw + 1
    xg = xp.reshape(N, G, Cg, xp.shape[2], xp.shape[3])
    Wg = W.reshape(G, O // G, Cg, KH, KW)
    out = np.zeros((N, G, O // G, OH, OW))
    for i in range(KH):
        for j in range(KW):
            patch = xg[:, :, :, i * dh : i * dh + sh * (OH - 1) + 1 : sh, j * dw : j * dw + sw * (OW - 1) + 1 : sw]
            out += np.einsum("ngchw,goc->ngohw", patch, Wg[:, :, :, i, j])
    out = out.reshape(N, O, OH, OW)
    if b is not None:
        out = out + np.asarray(b).reshape(1, O, 1, 1)
    return out[:, :, 0, :] if one_d else out


def conv_backward(g: np.ndarray, W: np.ndarray, attrs: dict, in_shape: tuple) -> np.ndarray:
    """Transposed convolution: the input-gradient ``W^T g`` of :func:`conv_forward`."""
    one_d = attrs["dims"] == 1
    a, W = _as2d(attrs, W)
    if one_d:
        g = g[:, :, None, :]
        in_shape = (in_shape[0], 1, in_shape[1])
    (pt, pb), (pl, pr) = a["padding"]
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    G = a["groups"]
    C, H, Wd = in_shape
    N, O, OH, OW = g.shape
    _, Cg, KH, KW = W.shape
    gx = np.zeros((N, G, Cg, H + pt + pb, Wd + pl + pr))
    gg = g.reshape(N, G, O // G, OH, OW)
    Wg = W.reshape(G, O // G, Cg, KH, KW)
    for i in range(KH):
        for j in range(KW):
            gx[:, :, :, i * dh : i * dh + sh * (OH - 1) + 1 : sh, j * dw : j * dw + sw * (OW - 1) + 1 : sw] += np.einsum(
                "ngohw,goc->ngchw", gg, Wg[:, :, :, i, j]
            )
    gx = gx[:, :, :, pt : pt + H, pl : pl + Wd].reshape(N, C, H, Wd)
    return gx[:, :, 0, :] if one_d else gx


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


def _transposed_conv_fns(node, in_shape: tuple):
    """fwd / bwd of a conv_transpose node: conv_backward of its virtual conv, and the
    virtual conv (cropped to the input: PyTorch's output_padding adds positions
    that no input reaches back to)."""
    out_shape = tuple(node.shape)
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in in_shape[1:])

    def fwd(x, W, b):
        y = conv_backward(x, W, node.attrs, out_shape)
        return y if b is None else y + np.asarray(b).reshape((1, -1) + (1,) * (y.ndim - 2))

    def bwd(g, W):
        return conv_forward(g, W, None, node.attrs)[crop]

    return fwd, bwd


def _diagonal_fns(node):
    """fwd / bwd of a batchnorm node seen as a layer with a diagonal weight: ``W`` and ``b``
    hold one number per channel (per-sample axis 0)."""
    extra = (1,) * (len(node.shape) - 1)

    def fwd(x, W, b):
        z = x * W.reshape((-1,) + extra)
        return z if b is None else z + np.asarray(b).reshape((-1,) + extra)

    def bwd(g, W):
        return g * W.reshape((-1,) + extra)

    return fwd, bwd


def _linear_fns(node, in_shape: tuple):
    if node.op == "conv_transpose":
        return _transposed_conv_fns(node, in_shape)
    if node.op == "batchnorm":
        return _diagonal_fns(node)
    if node.op == "dense":
        def fwd(x, W, b):
            z = x @ W.T
            return z if b is None else z + b

        def bwd(g, W):
            return g @ W

        return fwd, bwd

    def fwd(x, W, b):
        return conv_forward(x, W, b, node.attrs)

    def bwd(g, W):
        return conv_backward(g, W, node.attrs, in_shape)

    return fwd, bwd


class LinearReference:
    """Dense or conv layer with one of the parametric rules, in float64 (also a batchnorm
    node under such a rule: the diagonal layer ``x * scale + shift``)."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        wname, bname = ("scale", "shift") if node.op == "batchnorm" else ("weight", "bias")
        self.W = np.asarray(node.params[wname], dtype=np.float64)
        b = node.params.get(bname)
        self.b = None if b is None else np.asarray(b, dtype=np.float64)
        self.in_shape = tuple(graph[node.inputs[0]].shape)
        self.fwd, self.bwd = _linear_fns(node, self.in_shape)
        if rule.kind == "zbox":
            self.low = np.broadcast_to(np.asarray(rule.low, dtype=np.float64), self.in_shape)
            self.high = np.broadcast_to(np.asarray(rule.high, dtype=np.float64), self.in_shape)

    def forward(self, inputs):
        x = inputs[0]
        return self.fwd(x, self.W, self.b), x

    def relevance(self, x, R):
        r = self.rule
        W, fwd, bwd = self.W, self.fwd, self.bwd
        b = self.b
        if getattr(r, "zero_bias", False) or b is None:
            b = np.zeros(self.node.shape[-1] if self.node.op == "dense" else self.node.shape[0])
        k = r.kind
        if k == "pass":
            return [R]
        guard = getattr(r, "guard", "sign")

        def div(R, z, eps):
            return R / stabilize(z, eps, guard)

        if k == "epsilon":
            return [x * bwd(div(R, fwd(x, W, b), r.epsilon), W)]
        xp, xn = _pos(x), _neg(x)
        Wp, Wn = _pos(W), _neg(W)
        zero = np.zeros_like(b)
        if k == "zplus" and not r.split_inputs:  # iNNvestigate's ZPlusFast: W+ and the inputs as they are
            return [x * bwd(div(R, fwd(x, Wp, _pos(b)), r.stabilizer), Wp)]
        if k == "zplus":
            z = fwd(xp, Wp, _pos(b)) + fwd(xn, Wn, zero)
            g = div(R, z, r.stabilizer)
            return [xp * bwd(g, Wp) + xn * bwd(g, Wn)]
        if k == "alphabeta":
            ba, bb = (b, b) if r.whole_bias else (_pos(b), _neg(b))
            za = fwd(xp, Wp, ba) + fwd(xn, Wn, zero)
            zb = fwd(xp, Wn, bb) + fwd(xn, Wp, zero)
            ga = div(R, za, r.stabilizer)
            gb = div(R, zb, r.stabilizer)
            Ra = xp * bwd(ga, Wp) + xn * bwd(ga, Wn)
            Rb = xp * bwd(gb, Wn) + xn * bwd(gb, Wp)
            return [r.alpha * Ra - r.beta * Rb]
        if k == "alphabetax":
            def term(xs, Ws, bs):
                return xs * bwd(div(R, fwd(xs, Ws, bs), r.stabilizer), Ws)

            (a0, a1), (b0, b1) = r.alpha, r.beta
            bp, bn = _pos(b), _neg(b)
            return [a0 * term(xp, Wp, bp) + a1 * term(xn, Wn, bn) - b0 * term(xp, Wn, bn) - b1 * term(xn, Wp, bp)]
        if k == "gamma":
            Wu, Wd = W + r.gamma * Wp, W + r.gamma * Wn
            bu, bd = b + r.gamma * _pos(b), b + r.gamma * _neg(b)
            z = fwd(x, W, b)
            zp = fwd(xp, Wu, bu) + fwd(xn, Wd, zero)
            zn = fwd(xp, Wd, bd) + fwd(xn, Wu, zero)
            gp = (z > 0) * R / stabilize(zp, r.stabilizer)
            gn = (z < 0) * R / stabilize(zn, r.stabilizer)
            return [xp * bwd(gp, Wu) + xn * bwd(gp, Wd) + xp * bwd(gn, Wd) + xn * bwd(gn, Wu)]
        if k == "zbox":
            N = x.shape[0]
            low = np.broadcast_to(self.low, (N,) + self.in_shape)
            high = np.broadcast_to(self.high, (N,) + self.in_shape)
            z = fwd(x, W, zero) - fwd(low, Wp, zero) - fwd(high, Wn, zero)
            g = R / stabilize(z, r.stabilizer)
            return [x * bwd(g, W) - low * bwd(g, Wp) - high * bwd(g, Wn)]
        if k == "flat":
            ones_w = np.ones_like(W)
            n = fwd(np.ones_like(x), ones_w, zero)
            return [bwd(R / stabilize(n, r.stabilizer), ones_w)]
        if k == "wsquare":
            W2 = W * W
            z = fwd(np.ones_like(x), W2, b * b)
            return [bwd(div(R, z, r.stabilizer), W2)]
        raise ValueError(f"{self.node.describe()}: rule '{k}' is not a rule for dense/conv layers")


# --------------------------------------------------------------------------------------
# the lowering the compiled kernels take
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv2dGeometry:
    """A dense or conv node as a 2-d convolution over (C, H, W) images.

    ``weight`` is the float64 weight as ``(O, Cg, KH, KW)``; ``pad`` holds
    ``((top, bottom), (left, right))``. A dense layer on the last axis of a
    ``(..., in)`` input is a 1x1 conv over ``rows = prod(...)`` images per sample
    (kernels fold them into the batch).
    """

    C: int
    H: int
    W: int
    O: int
    G: int
    kernel: tuple
    stride: tuple
    pad: tuple
    dilation: tuple
    OH: int
    OW: int
    weight: np.ndarray
    spatial_dims: int  # 0 for dense, else the conv's dims
    rows: int = 1  # a dense layer on the last axis of (..., in): the leading positions, run as more samples

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def Og(self) -> int:
        return self.O // self.G


def conv2d_geometry(graph, node) -> Conv2dGeometry:
    """Lower a (shape-checked) dense or conv node to :class:`Conv2dGeometry`."""
    W = np.asarray(node.params["weight"], dtype=np.float64)
    in_shape = tuple(graph[node.inputs[0]].shape)
    if node.op == "dense":
        O, I = W.shape
        return Conv2dGeometry(I, 1, 1, O, 1, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 1,
                              W.reshape(O, I, 1, 1), 0, int(np.prod(in_shape[:-1], dtype=np.int64)))
    a = node.attrs
    if a["dims"] == 1:
        return Conv2dGeometry(in_shape[0], 1, in_shape[1], W.shape[0], int(a["groups"]), (1, W.shape[2]),
                              (1, a["stride"][0]), ((0, 0), tuple(a["padding"][0])), (1, a["dilation"][0]),
                              1, node.shape[1], W[:, :, None, :], 1)
    return Conv2dGeometry(*in_shape, W.shape[0], int(a["groups"]), tuple(W.shape[2:]), tuple(a["stride"]),
                          tuple(tuple(p) for p in a["padding"]), tuple(a["dilation"]), node.shape[1], node.shape[2],
                          W, 2)


# --------------------------------------------------------------------------------------
# the specs
# --------------------------------------------------------------------------------------
class _LinearSpec(OpSpec):
    rules = PARAMETRIC_RULES
    parametric = True

    def default_rule(self, graph, node, stabilizer):
        return None  # a composite must say which rule a weighted layer gets

    def check_rule(self, graph, node, rule):
        pass_keeps_shape(graph, node, rule)

    def reference(self, graph, node, rule):
        return LinearReference(graph, node, rule)


class DenseSpec(_LinearSpec):
    name = "dense"
    doc = "fully connected layer y = W x + b"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        w = node.params["weight"]
        if w.ndim != 2:
            raise GraphError(f"{node.describe()}: weight must be 2-D (out, in), got shape {w.shape}")
        if len(in_shapes[0]) < 1 or in_shapes[0][-1] != w.shape[1]:
            raise GraphError(
                f"{node.describe()}: input of shape {in_shapes[0]} does not match weight "
                f"(out={w.shape[0]}, in={w.shape[1]}; the layer acts on the last axis)"
            )
        _check_bias(node, w.shape[0])
        return (*in_shapes[0][:-1], w.shape[0])

    def type_keys(self, node):
        return ("dense", "linear")


def _conv_parts(node, in_shapes, layout: str):
    """attrs, dims, weight, groups and input shape of a (transposed) conv, the weight's rank checked."""
    need_inputs(node, in_shapes, 1)
    a = node.attrs
    d = int(a["dims"])
    check_window(node, d)
    w = node.params["weight"]
    if w.ndim != d + 2:
        raise GraphError(f"{node.describe()}: weight must be {d + 2}-D {layout}, got shape {w.shape}")
    return a, d, w, int(a.get("groups", 1)), in_shapes[0]


class ConvSpec(_LinearSpec):
    name = "conv"
    doc = "1-d / 2-d convolution (stride, padding pairs, dilation, groups)"

    def infer(self, node, in_shapes):
        a, d, w, g, ins = _conv_parts(node, in_shapes, "(out, in/groups, *kernel)")
        if len(ins) != d + 1:
            raise GraphError(f"{node.describe()}: input must have {d + 1} axes (C, spatial...), got {ins}")
        if ins[0] != w.shape[1] * g or w.shape[0] % g:
            raise GraphError(f"{node.describe()}: {ins[0]} input channels do not match weight {w.shape} with groups={g}")
        _check_bias(node, w.shape[0])
        pads = tuple((int(p), int(q)) for p, q in a["padding"])
        sp = [
            conv_output_length(ins[1 + i], w.shape[2 + i], a["stride"][i], pads[i], a["dilation"][i])
            for i in range(d)
        ]
        return (w.shape[0], *sp)

    def type_keys(self, node):
        return (f"conv{node.attrs['dims']}d", "conv", "linear")


class ConvTransposeSpec(_LinearSpec):
    name = "conv_transpose"
    doc = "1-d / 2-d transposed convolution (stride, padding pairs, dilation, groups)"

    def infer(self, node, in_shapes):
        a, d, w, g, ins = _conv_parts(node, in_shapes, "(in, out/groups, *kernel)")
        if len(ins) != d + 1 or ins[0] != w.shape[0] or w.shape[0] % g:
            raise GraphError(f"{node.describe()}: input {ins} does not match weight {w.shape} with groups={g}")
        out_c = w.shape[1] * g
        _check_bias(node, out_c)
        pads = tuple((int(p), int(q)) for p, q in a["padding"])
        if any(p < 0 or q < 0 for p, q in pads):
            raise GraphError(f"{node.describe()}: padding {pads} must be >= 0")
        size = tuple(int(v) for v in a["output_size"])
        if len(size) != d:
            raise GraphError(f"{node.describe()}: output_size {size} must have {d} lengths")
        for i, n in enumerate(size):
            k, st, dil = w.shape[2 + i], a["stride"][i], a["dilation"][i]
            reach = conv_output_length(n, k, st, pads[i], dil)  # what the conv it transposes maps back to
            if n < 1 or reach < ins[1 + i]:
                raise GraphError(f"{node.describe()}: output length {n} along spatial axis {i} does not fit an input "
                                 f"of {ins[1 + i]} (kernel {k}, stride {st}, dilation {dil}, padding {pads[i]})")
        a["output_size"] = size
        return (out_c, *size)

    def type_keys(self, node):
        return (f"conv_transpose{node.attrs['dims']}d", "conv_transpose", "conv", "linear")


register_op(DenseSpec())
register_op(ConvSpec())
register_op(ConvTransposeSpec())
