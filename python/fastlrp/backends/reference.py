"""The float64 NumPy reference backend: slow, plain, and the oracle for all others.

Every dense and conv rule is written once, in terms of two functions of the
layer: ``fwd(x, W, b)`` (the layer applied with modified inputs/weights) and
``bwd(g, W)`` (the transposed layer, i.e. the input-gradient ``W^T g``). The
formulas are docs/design.md section 2's, term by term. Convolutions loop over kernel taps with
strided slices; pools use explicit window index tables.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Node

__all__ = ["ReferenceBackend", "stabilize", "conv_forward", "conv_backward"]


def stabilize(z: np.ndarray, eps: float) -> np.ndarray:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (zennit's stabilizer)."""
    return z + np.where(z >= 0, eps, -eps)


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


# --------------------------------------------------------------------------------------
# linear layers as (fwd, bwd) pairs
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


def _linear_fns(node: Node, in_shape: tuple):
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


class _LinearOp:
    """Dense or conv layer with one of the parametric rules."""

    def __init__(self, graph: Graph, node: Node, rule):
        self.node, self.rule = node, rule
        self.W = np.asarray(node.params["weight"], dtype=np.float64)
        b = node.params.get("bias")
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
            b = np.zeros(W.shape[0])
        k = r.kind
        if k == "pass":
            return [R]
        if k == "epsilon":
            g = R / stabilize(fwd(x, W, b), r.epsilon)
            return [x * bwd(g, W)]
        xp, xn = _pos(x), _neg(x)
        Wp, Wn = _pos(W), _neg(W)
        zero = np.zeros_like(b)
        if k == "zplus":
            z = fwd(xp, Wp, _pos(b)) + fwd(xn, Wn, zero)
            g = R / stabilize(z, r.stabilizer)
            return [xp * bwd(g, Wp) + xn * bwd(g, Wn)]
        if k == "alphabeta":
            za = fwd(xp, Wp, _pos(b)) + fwd(xn, Wn, zero)
            zb = fwd(xp, Wn, _neg(b)) + fwd(xn, Wp, zero)
            ga = R / stabilize(za, r.stabilizer)
            gb = R / stabilize(zb, r.stabilizer)
            Ra = xp * bwd(ga, Wp) + xn * bwd(ga, Wn)
            Rb = xp * bwd(gb, Wn) + xn * bwd(gb, Wp)
            return [r.alpha * Ra - r.beta * Rb]
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
            return [bwd(R / stabilize(z, r.stabilizer), W2)]
        raise ValueError(f"{self.node.describe()}: rule '{k}' is not a rule for dense/conv layers")


# --------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------
def _window_table(length, kernel, stride, pad, dilation, out_len):
    """Per output position: the input indices of its window (-1 where padded)."""
    starts = np.arange(out_len) * stride - pad[0]
    idx = starts[:, None] + np.arange(kernel)[None, :] * dilation
    idx = np.where((idx >= 0) & (idx < length), idx, -1)
    return idx


def _avg_matrix(length, kernel, stride, pad, out_len, count_include_pad, divisor_override):
    """Averaging along one axis as a matrix (out_len, length) of 0/1, and the
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


class _AvgPoolOp:
    """Average pooling (fixed or adaptive) as a per-axis separable linear map
    ``out[c] = A_h x[c] A_w^T``; relevance by the Norm rule, per channel."""

    def __init__(self, graph: Graph, node: Node, rule):
        self.node, self.rule = node, rule
        a = node.attrs
        in_shape = graph[node.inputs[0]].shape
        out_shape = node.shape
        self.mats = []
        d = a["dims"]
        if node.op == "adaptive_avgpool":
            for i in range(d):
                self.mats.append(_adaptive_matrix(in_shape[1 + i], out_shape[1 + i]))
        else:
            sizes = []
            for i in range(d):
                S, size = _avg_matrix(
                    in_shape[1 + i], a["kernel"][i], a["stride"][i], a["padding"][i], out_shape[1 + i],
                    a["count_include_pad"], a.get("divisor_override"),
                )
                self.mats.append(S)
                sizes.append(size)
            if a.get("divisor_override"):
                self.mats[0] = self.mats[0] / a["divisor_override"]
            else:
                for S, size in zip(self.mats, sizes):
                    S /= size[:, None]

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
        if r.kind == "pass":
            raise ValueError(f"{self.node.describe()}: Pass cannot change the shape of relevance")
        if r.kind == "flat":
            ones = np.ones_like(x)
            return [self._apply(R / stabilize(self._apply(ones), r.stabilizer), transpose=True)]
        z = self._apply(x)
        return [x * self._apply(R / stabilize(z, r.stabilizer), transpose=True)]


class _MaxPoolOp:
    """Max pooling; relevance goes to each window's first arg-max (PyTorch's gradient),
    or, with the Norm rule, to every input of the window in proportion to its value."""

    def __init__(self, graph: Graph, node: Node, rule):
        self.node, self.rule = node, rule
        a = node.attrs
        in_shape = graph[node.inputs[0]].shape
        self.d = a["dims"]
        self.tables = [
            _window_table(in_shape[1 + i], a["kernel"][i], a["stride"][i], a["padding"][i],
                          a.get("dilation", (1,) * self.d)[i], node.shape[1 + i])
            for i in range(self.d)
        ]

    def _windows(self, x):
        # gather every window (padding = -inf so it never wins)
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

    def _proportional(self, x, R):
        # the Norm rule on the window sums: padding taps (-inf) count as 0
        win = self._windows(x)
        win = np.where(np.isneginf(win), 0.0, win)
        g = R / stabilize(win.sum(axis=-1), self.rule.stabilizer)
        shares = win * g[..., None]  # (N, C, *out, K)
        N, C = x.shape[:2]
        out = np.zeros((N, C, int(np.prod(x.shape[2:]))))
        if self.d == 1:
            (t,) = self.tables
            flat = np.broadcast_to(t, shares.shape[2:])
        else:
            th, tw = self.tables
            KW = tw.shape[1]
            k = np.arange(th.shape[1] * KW)
            ih = th[:, None, k // KW]  # (OH, 1, K)
            iw = tw[None, :, k % KW]  # (1, OW, K)
            flat = np.where((ih < 0) | (iw < 0), -1, ih * x.shape[3] + iw)
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
# structure and elementwise
# --------------------------------------------------------------------------------------
def _gelu(x):
    from math import sqrt

    try:
        from scipy.special import erf  # noqa: PLC0415
    except ImportError:  # pragma: no cover - numpy-only fallback
        erf = np.vectorize(__import__("math").erf)
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def _softmax(x):
    flat = x.reshape(x.shape[0], -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


_ACT = {
    "relu": lambda x, a: np.maximum(x, 0),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * a.get("negative_slope", 0.01)),
    "elu": lambda x, a: np.where(x > 0, x, a.get("alpha", 1.0) * np.expm1(np.minimum(x, 0))),
    "tanh": lambda x, a: np.tanh(x),
    "sigmoid": lambda x, a: 0.5 * (1 + np.tanh(0.5 * x)),
    "gelu": lambda x, a: _gelu(x),
    "silu": lambda x, a: x * 0.5 * (1 + np.tanh(0.5 * x)),
    "softplus": lambda x, a: np.logaddexp(0, x),
    "identity": lambda x, a: x,
    "softmax": lambda x, a: _softmax(x),
    "log_softmax": lambda x, a: np.log(_softmax(x)),
}


class _ElementwiseOp:
    def __init__(self, graph, node, rule):
        self.node = node
        a = node.attrs
        if node.op == "batchnorm":
            scale = np.asarray(node.params["scale"], np.float64)
            shift = np.asarray(node.params["shift"], np.float64)
            extra = (1,) * (len(node.shape) - 1)
            s, t = scale.reshape((-1,) + extra), shift.reshape((-1,) + extra)
            self.f = lambda x: x * s + t
        else:
            fn = _ACT[a["kind"]]
            self.f = lambda x: fn(x, a)

    def forward(self, inputs):
        return self.f(inputs[0]), None

    def relevance(self, ctx, R):
        return [R]


class _ReshapeOp:
    def __init__(self, graph, node, rule):
        self.node = node
        self.in_shape = tuple(graph[node.inputs[0]].shape)

    def forward(self, inputs):
        x = inputs[0]
        if self.node.op == "permute":
            return x.transpose((0,) + tuple(p + 1 for p in self.node.attrs["perm"])), None
        return x.reshape((x.shape[0],) + tuple(self.node.shape)), None

    def relevance(self, ctx, R):
        if self.node.op == "permute":
            inv = np.argsort(self.node.attrs["perm"])
            return [R.transpose((0,) + tuple(int(p) + 1 for p in inv))]
        return [R.reshape((R.shape[0],) + self.in_shape)]


class _AddOp:
    """Residual add; Norm rule: each summand gets its share of the sum."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule

    def forward(self, inputs):
        return sum(inputs[1:], inputs[0].copy()), inputs

    def relevance(self, inputs, R):
        if self.rule.kind == "pass":
            return [R / len(inputs) for _ in inputs]
        g = R / stabilize(sum(inputs[1:], inputs[0].copy()), self.rule.stabilizer)
        return [x * g for x in inputs]


class _ConcatOp:
    def __init__(self, graph, node, rule):
        self.node = node
        self.axis = node.attrs["axis"] + 1
        self.sizes = [graph[i].shape[node.attrs["axis"]] for i in node.inputs]

    def forward(self, inputs):
        return np.concatenate(inputs, axis=self.axis), None

    def relevance(self, ctx, R):
        return np.split(R, np.cumsum(self.sizes)[:-1], axis=self.axis)


class _InputOp:
    def __init__(self, graph, node, rule):
        pass

    def forward(self, inputs):
        return inputs[0], None

    def relevance(self, ctx, R):
        return []


_OPS = {
    "input": _InputOp,
    "dense": _LinearOp,
    "conv": _LinearOp,
    "maxpool": _MaxPoolOp,
    "avgpool": _AvgPoolOp,
    "adaptive_avgpool": _AvgPoolOp,
    "reshape": _ReshapeOp,
    "permute": _ReshapeOp,
    "add": _AddOp,
    "concat": _ConcatOp,
    "activation": _ElementwiseOp,
    "batchnorm": _ElementwiseOp,
}


class ReferenceBackend:
    """Float64 NumPy, every node and rule, written to be obviously correct."""

    name = "reference"
    dtype = np.dtype(np.float64)

    def prepare(self, graph: Graph, node: Node, rule):
        return _OPS[node.op](graph, node, rule)
