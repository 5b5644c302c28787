"""The Numba backend (``backend="numba"``): float32 kernels for dense, conv and
pooling layers (every rule), used when the compiled extension is missing or when
asked for; the other ops run the one fallback of :mod:`fastlrp.backends.dispatch`.

Dense and conv layers (a dense layer is a 1x1 conv over a 1x1 image) follow
docs/design.md section 3, in two passes per layer:

- **forward-sum** (in :meth:`_LinearOp.forward`, once per batch, shared by all
  targets): :func:`_im2col` packs one chunk of samples into GEMM columns and,
  for the sign-splitting rules, splits the input while packing (rows
  ``[x+ ; x-]``); one BLAS GEMM against a weight matrix precomputed in
  ``prepare``; :func:`_fwd_epilogue` adds the bias and writes ``z`` (and the
  positive / negative sums ``P = W+x+ + W-x-``, ``Q = W-x+ + W+x-``).
- **backward** (in :meth:`_LinearOp.relevance`, per target):
  :func:`_bwd_prologue` does the stabilized division ``R / s(.)`` and writes the
  GEMM operand (for AlphaBeta ``[a ga ; -b gb]``, for Gamma the two masked
  factors combined); one transposed GEMM (``[W+ W-; W- W+]^T [..]``, doubled
  K, as docs/design.md section 3 describes); :func:`_col2im` scatters the columns back and
  multiplies by ``x``, ``x+``/``x-`` (split while reading ``x``) or
  ``x``/``l``/``h`` in its epilogue.

The stabilized division cannot sit in the forward GEMM's own epilogue here
because ``R`` is not known then (the engine runs one forward for several
targets); it sits in the packing of the backward GEMM's operand instead, so
no ``R / s(z)`` array exists apart from that (chunk-sized) operand.

Model-constant work is done once in ``prepare``: the stacked weight matrices
(``[W+; W-]`` when the input is known non-negative, ``[[W+, W-], [W-, W+]]``
otherwise), ``W^2`` and its sums, Flat counts, ZBox's ``W+ l + W- h``. When a
layer's input is known non-negative (produced by a ReLU, possibly through pools,
reshapes, adds or concats) the ``x-`` half is skipped: packing, GEMM K and the
backward products are half as large.

Accumulation: the GEMMs run in float32 (OpenBLAS sgemm; its blocked sums err by
about ``sqrt(K) * 2**-24`` relative to the sum of absolute terms, well inside
the test tolerance, and float32 is what makes them fast). Every reduction
written here (pool windows, col2im tap sums, Gamma's ``(1 + g) P + Q``, the
stabilized divisions) accumulates in float64 scalars: it costs nothing at these
sizes and keeps cancellation in ``z`` the only float32 error that matters.

Convolutions are im2col per chunk of samples (bounded to ``_CHUNK_FLOATS``
floats per buffer), never for the whole batch. Kernels use ``prange`` over
(sample, channel) or (sample, output channel); each output element is written
by one iteration in a fixed order, so results do not depend on the number of
Numba threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..graph import Graph, Node
from ..ops.linear import conv2d_geometry
from ..ops.pool import avgpool_matrices, pool2d_geometry
from ..rules import stabilizer_of
from .base import zbox_bounds
from .dispatch import prepare as dispatch_prepare
from .dispatch import register_kernel
from .linear_plan import LinearPlan

__all__ = ["NumbaBackend"]

_JIT = dict(parallel=True, cache=True, fastmath=False, nogil=True)

#: Upper bound on floats in one im2col / backward-operand buffer (16 MiB).
_CHUNK_FLOATS = 1 << 22

# codes for the backward prologue
_K_EPS, _K_ZPLUS, _K_AB, _K_GAMMA, _K_CONST, _K_ZBOX = 0, 1, 2, 3, 4, 5
# codes for the col2im epilogue
_M_NONE, _M_X, _M_SPLIT, _M_BOX = 0, 1, 2, 3

_F32 = np.float32


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=_F32)


# --------------------------------------------------------------------------------------
# kernels: dense / conv
# --------------------------------------------------------------------------------------
@njit(inline="always")
def _valid_range(out_len, stride, offset, length):
    """Output positions o in [lo, hi) with 0 <= o * stride + offset < length."""
    lo = 0
    while lo < out_len and lo * stride + offset < 0:
        lo += 1
    hi = out_len
    while hi > lo and (hi - 1) * stride + offset >= length:
        hi -= 1
    return lo, hi


@njit(**_JIT)
def _im2col(x, n0, nc, G, Cg, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW, split, cols):
    """Pack samples n0..n0+nc of x (N, C, H, W) into cols (G, Kc*(1+split), nc*OH*OW),
    row (c_local, kh, kw); with ``split`` rows [0, Kc) hold x+ and [Kc, 2Kc) x-."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = OH * OW
    Kc = Cg * KH * KW
    for t in prange(nc * C):
        nl = t // C
        c = t - nl * C
        n = n0 + nl
        g = c // Cg
        cl = c - g * Cg
        for kh in range(KH):
            for kw in range(KW):
                row = (cl * KH + kh) * KW + kw
                off = kw * dw - pl
                lo, hi = _valid_range(OW, sw, off, W)
                for oh in range(OH):
                    ih = oh * sh - pt + kh * dh
                    dst = nl * P + oh * OW
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            cols[g, row, dst + ow] = 0.0
                            if split:
                                cols[g, row + Kc, dst + ow] = 0.0
                        continue
                    for ow in range(lo):
                        cols[g, row, dst + ow] = 0.0
                    for ow in range(hi, OW):
                        cols[g, row, dst + ow] = 0.0
                    if split:
                        for ow in range(lo):
                            cols[g, row + Kc, dst + ow] = 0.0
                        for ow in range(hi, OW):
                            cols[g, row + Kc, dst + ow] = 0.0
                        for ow in range(lo, hi):
                            v = x[n, c, ih, ow * sw + off]
                            cols[g, row, dst + ow] = max(v, 0.0)
                            cols[g, row + Kc, dst + ow] = min(v, 0.0)
                    else:
                        for ow in range(lo, hi):
                            cols[g, row, dst + ow] = x[n, c, ih, ow * sw + off]


@njit(**_JIT)
def _fwd_epilogue(Y, bias, n0, nc, Og, pq, z, Pa, Qa):
    """Y (G, rows, nc*P) -> z (N, O, P) = Y + bias; with ``pq`` the rows are
    [P; Q] (positive and negative sums), kept in Pa, Qa, and z = P + Q + bias."""
    O, P = z.shape[1], z.shape[2]
    for t in prange(nc * O):
        nl = t // O
        o = t - nl * O
        n = n0 + nl
        g = o // Og
        ol = o - g * Og
        b = bias[o]
        base = nl * P
        if pq:
            for p in range(P):
                a = Y[g, ol, base + p]
                q = Y[g, Og + ol, base + p]
                Pa[n, o, p] = a
                Qa[n, o, p] = q
                z[n, o, p] = a + q + b
        else:
            for p in range(P):
                z[n, o, p] = Y[g, ol, base + p] + b


@njit(inline="always")
def _stab_div(r, d, eps):
    """r / s(d), s(d) = d + eps * sign(d), sign(0) = +1."""
    return r / (d + eps if d >= 0.0 else d - eps)


@njit(**_JIT)
def _bwd_prologue(R, z, Pa, Qa, const, bshift, brule, n0, nc, Og, kind, eps, c1, c2, Gm):
    """The stabilized division, written as the backward GEMM's operand Gm (G, rows, nc*P).

    kind  _K_EPS:   g = R / s(z + bshift)                     (bshift: rule bias - layer bias)
          _K_ZPLUS: g = R / s(P + b+)
          _K_AB:    [c1 R / s(P + b+) ; -c2 R / s(Q + b-)]    (c1 = alpha, c2 = beta)
          _K_GAMMA: gp = [z>0] R / s((1+c1) P + Q + bu), gn = [z<0] R / s(P + (1+c1) Q + bd),
                    rows [(1+c1) gp + gn ; gp + (1+c1) gn]   (c1 = gamma)
          _K_CONST: g = R / s(const)                         (Flat counts, W^2 sums)
          _K_ZBOX:  g = R / s(z + bshift - const)            (const = W+ l + W- h)
    """
    O, P = R.shape[1], R.shape[2]
    for t in prange(nc * O):
        nl = t // O
        o = t - nl * O
        n = n0 + nl
        g = o // Og
        ol = o - g * Og
        base = nl * P
        br = float(brule[o])
        bp = max(br, 0.0)
        bn = min(br, 0.0)
        bs = float(bshift[o])
        for p in range(P):
            r = float(R[n, o, p])
            if kind == _K_EPS:
                Gm[g, ol, base + p] = _stab_div(r, float(z[n, o, p]) + bs, eps)
            elif kind == _K_ZPLUS:
                Gm[g, ol, base + p] = _stab_div(r, float(Pa[n, o, p]) + bp, eps)
            elif kind == _K_AB:
                Gm[g, ol, base + p] = c1 * _stab_div(r, float(Pa[n, o, p]) + bp, eps)
                Gm[g, Og + ol, base + p] = -c2 * _stab_div(r, float(Qa[n, o, p]) + bn, eps)
            elif kind == _K_GAMMA:
                a = float(Pa[n, o, p])
                q = float(Qa[n, o, p])
                zr = a + q + br
                gp = 0.0
                gn = 0.0
                if zr > 0.0:
                    gp = _stab_div(r, (1.0 + c1) * a + q + br + c1 * bp, eps)
                elif zr < 0.0:
                    gn = _stab_div(r, a + (1.0 + c1) * q + br + c1 * bn, eps)
                Gm[g, ol, base + p] = (1.0 + c1) * gp + gn
                Gm[g, Og + ol, base + p] = gp + (1.0 + c1) * gn
            elif kind == _K_CONST:
                Gm[g, ol, base + p] = _stab_div(r, float(const[o, p]), eps)
            else:
                Gm[g, ol, base + p] = _stab_div(r, float(z[n, o, p]) + bs - float(const[o, p]), eps)


@njit(**_JIT)
def _col2im(A, x, low, high, n0, nc, G, Cg, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW, mode, out):
    """Scatter A (G, parts*Kc, nc*P) back to input positions and finish R_in (N, C, H, W).

    mode _M_NONE: S0;  _M_X: x * S0;  _M_SPLIT: x+ * S0 + x- * S1;
         _M_BOX: x * S0 - low * S1 - high * S2   (S_k: the scattered part k).
    """
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    P = OH * OW
    Kc = Cg * KH * KW
    parts = 1
    if mode == _M_SPLIT:
        parts = 2
    elif mode == _M_BOX:
        parts = 3
    for t in prange(nc * C):
        nl = t // C
        c = t - nl * C
        n = n0 + nl
        g = c // Cg
        cl = c - g * Cg
        acc = np.zeros((parts, H, W))
        for part in range(parts):
            for kh in range(KH):
                for kw in range(KW):
                    row = part * Kc + (cl * KH + kh) * KW + kw
                    off = kw * dw - pl
                    lo, hi = _valid_range(OW, sw, off, W)
                    for oh in range(OH):
                        ih = oh * sh - pt + kh * dh
                        if ih < 0 or ih >= H:
                            continue
                        src = nl * P + oh * OW
                        for ow in range(lo, hi):
                            acc[part, ih, ow * sw + off] += A[g, row, src + ow]
        for ih in range(H):
            for iw in range(W):
                if mode == _M_NONE:
                    out[n, c, ih, iw] = acc[0, ih, iw]
                elif mode == _M_X:
                    out[n, c, ih, iw] = x[n, c, ih, iw] * acc[0, ih, iw]
                elif mode == _M_SPLIT:
                    v = float(x[n, c, ih, iw])
                    out[n, c, ih, iw] = max(v, 0.0) * acc[0, ih, iw] + min(v, 0.0) * acc[1, ih, iw]
                else:
                    out[n, c, ih, iw] = (
                        x[n, c, ih, iw] * acc[0, ih, iw] - low[c, ih, iw] * acc[1, ih, iw] - high[c, ih, iw] * acc[2, ih, iw]
                    )


# --------------------------------------------------------------------------------------
# kernels: pooling
# --------------------------------------------------------------------------------------
@njit(**_JIT)
def _maxpool_fwd(x, KH, KW, sh, sw, pt, pl, dh, dw, out, arg):
    """Window max and the flat input index of its first arg-max (row-major taps;
    padded taps are skipped, so they never win)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for oh in range(OH):
            for ow in range(OW):
                best = -np.inf
                bi = -1
                for kh in range(KH):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= W:
                            continue
                        v = x[n, c, ih, iw]
                        if v > best:
                            best = v
                            bi = ih * W + iw
                out[n, c, oh, ow] = best
                arg[n, c, oh, ow] = bi


@njit(**_JIT)
def _maxpool_bwd(R, arg, out):
    """out (N, C, H*W), zeroed: R routed to each window's arg-max, overlaps accumulate."""
    N, C, OH, OW = R.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for oh in range(OH):
            for ow in range(OW):
                i = arg[n, c, oh, ow]
                if i >= 0:
                    out[n, c, i] += R[n, c, oh, ow]


@njit(**_JIT)
def _avgpool_fwd(x, hs, he, wh, ws, we, ww, out):
    """out[oh, ow] = wh[oh] ww[ow] * sum of x over rows [hs, he) x cols [ws, we)."""
    N, C = x.shape[0], x.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for oh in range(OH):
            for ow in range(OW):
                s = 0.0
                for ih in range(hs[oh], he[oh]):
                    for iw in range(ws[ow], we[ow]):
                        s += x[n, c, ih, iw]
                out[n, c, oh, ow] = s * wh[oh] * ww[ow]


@njit(**_JIT)
def _avgpool_bwd(R, den, x, hs, he, wh, ws, we, ww, eps, norm, out):
    """Per channel: R_in = A^T [R / s(den)], times x for the Norm rule (den = the
    forward output z) or not for Flat (den = A 1, of shape (1, 1, OH, OW))."""
    N, C, H, W = out.shape
    OH, OW = R.shape[2], R.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        nd = n if norm else 0
        cd = c if norm else 0
        acc = np.zeros((H, W))
        for oh in range(OH):
            for ow in range(OW):
                v = _stab_div(float(R[n, c, oh, ow]), float(den[nd, cd, oh, ow]), eps) * wh[oh] * ww[ow]
                for ih in range(hs[oh], he[oh]):
                    for iw in range(ws[ow], we[ow]):
                        acc[ih, iw] += v
        for ih in range(H):
            for iw in range(W):
                out[n, c, ih, iw] = x[n, c, ih, iw] * acc[ih, iw] if norm else acc[ih, iw]


@njit(**_JIT)
def _gelu(x, out):
    for i in prange(x.size):
        v = float(x[i])
        out[i] = 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


# --------------------------------------------------------------------------------------
# node ops
# --------------------------------------------------------------------------------------
def _as4d(x: np.ndarray, spatial_dims: int) -> np.ndarray:
    """(N, C, L) -> (N, C, 1, L); (N, C, H, W) as is; (N, K) -> (N, K, 1, 1)."""
    if spatial_dims == 0:
        return x.reshape(x.shape[0], x.shape[1], 1, 1)
    if spatial_dims == 1:
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    return x


class _LinearOp:
    """Dense or conv layer with a parametric rule (or Pass)."""

    _SPLIT_RULES = ("zplus", "alphabeta", "gamma")

    def __init__(self, graph: Graph, node: Node, rule):
        self.node, self.rule = node, rule
        kind = rule.kind
        self.kind = kind
        self.in_shape = tuple(graph[node.inputs[0]].shape)
        self.out_shape = tuple(node.shape)
        geo = conv2d_geometry(graph, node)
        self.sdims = geo.spatial_dims
        self.rows = geo.rows  # a dense layer's positions run as more samples
        W4 = geo.weight
        G, (KH, KW), (sh, sw), (dh, dw) = geo.G, geo.kernel, geo.stride, geo.dilation
        (pt, _), (pl, _) = geo.pad
        C, H, Wd, O, OH, OW = geo.C, geo.H, geo.W, geo.O, geo.OH, geo.OW
        self.O, self.C, self.H, self.W = O, C, H, Wd
        self.G, self.Og, self.Cg = G, O // G, C // G
        self.P = OH * OW
        self.geom = (G, self.Cg, int(KH), int(KW), int(sh), int(sw), int(pt), int(pl), int(dh), int(dw), int(OH), int(OW))
        Kc = self.Cg * KH * KW
        Wg = W4.reshape(G, self.Og, Kc)
        Wp, Wn = np.maximum(Wg, 0), np.minimum(Wg, 0)

        b = node.params.get("bias")
        b = np.zeros(O) if b is None else np.asarray(b, dtype=np.float64)
        self.bias = _f32(b)  # the layer's own bias: the forward output
        brule = np.zeros(O) if getattr(rule, "zero_bias", False) else b
        self.brule = _f32(brule)
        self.bshift = _f32(brule - b)  # rule bias - layer bias (0 unless zero_bias)
        self.const = np.zeros((1, 1), _F32)
        self.eps = stabilizer_of(rule)
        self.c1 = self.c2 = 0.0

        self.nonneg = graph.known_nonnegative(node.inputs[0])
        self.pq = kind in self._SPLIT_RULES
        self.split = int(self.pq and not self.nonneg)
        if self.pq:
            if self.split:
                Wf = np.concatenate([np.concatenate([Wp, Wn], 2), np.concatenate([Wn, Wp], 2)], 1)
            else:
                Wf = np.concatenate([Wp, Wn], 1)
            self.Wf = _f32(Wf)  # (G, 2 Og, Kc or 2 Kc): rows [P ; Q]
            Wb = Wf[:, : self.Og] if kind == "zplus" else Wf
            self.WbT = _f32(Wb.transpose(0, 2, 1))
            self.mode = _M_SPLIT if self.split else _M_X
            if kind == "zplus":
                self.pkind = _K_ZPLUS
            elif kind == "alphabeta":
                self.pkind, self.c1, self.c2 = _K_AB, float(rule.alpha), float(rule.beta)
            else:
                self.pkind, self.c1 = _K_GAMMA, float(rule.gamma)
        else:
            self.Wf = _f32(Wg)
            if kind in ("epsilon", "pass"):
                self.WbT = _f32(Wg.transpose(0, 2, 1))
                self.pkind, self.mode = _K_EPS, _M_X
            elif kind == "zbox":
                self.WbT = _f32(np.concatenate([Wg, Wp, Wn], 2).transpose(0, 2, 1))
                lo, hi = zbox_bounds(node, rule, self.in_shape)
                self.low, self.high = (_f32(v.reshape(self.rows, -1)[0]).reshape(self.C, self.H, self.W)
                                       for v in (lo, hi))
                cl, ch = self._cols_of(self.low), self._cols_of(self.high)
                self.const = _f32((Wp @ cl + Wn @ ch).reshape(O, self.P))
                self.bshift = _f32(-b)
                self.pkind, self.mode = _K_ZBOX, _M_BOX
            elif kind == "flat":
                ones = self._cols_of(np.ones((C, H, Wd), _F32))
                self.WbT = np.ones((G, Kc, self.Og), _F32)
                counts = np.repeat(ones.sum(axis=1, keepdims=True), self.Og, axis=1)
                self.const = _f32(counts.reshape(O, self.P))
                self.pkind, self.mode = _K_CONST, _M_NONE
            else:  # wsquare
                W2 = Wg * Wg
                self.WbT = _f32(W2.transpose(0, 2, 1))
                ones = self._cols_of(np.ones((C, H, Wd), _F32))
                self.const = _f32((W2 @ ones).reshape(O, self.P) + (brule * brule)[:, None])
                self.pkind, self.mode = _K_CONST, _M_NONE
        if not hasattr(self, "low"):
            self.low = self.high = np.zeros((1, 1, 1), _F32)
        rows = max(self.Wf.shape[1], self.Wf.shape[2], self.WbT.shape[1], self.WbT.shape[2])
        self.chunk = max(1, _CHUNK_FLOATS // (G * rows * self.P))

    def _cols_of(self, sample):
        """im2col of one model-constant sample (C, H, W), as float64 (G, Kc, P)."""
        G, Cg, KH, KW = self.geom[:4]
        cols = np.empty((G, Cg * KH * KW, self.P), _F32)
        _im2col(_f32(sample).reshape(1, self.C, self.H, self.W), 0, 1, *self.geom, 0, cols)
        return cols.astype(np.float64)

    def forward(self, inputs):
        x = _f32(inputs[0])
        N0 = x.shape[0]
        x4 = _as4d(x.reshape(N0 * self.rows, -1) if self.sdims == 0 else x, self.sdims)
        N = x4.shape[0]
        G, Og, P = self.G, self.Og, self.P
        z = np.empty((N, self.O, P), _F32)
        if self.pq:
            Pa, Qa = np.empty_like(z), np.empty_like(z)
        else:
            Pa = Qa = np.empty((1, 1, 1), _F32)
        Kf = self.Wf.shape[2]
        for n0 in range(0, N, self.chunk):
            m = min(self.chunk, N - n0)
            cols = np.empty((G, Kf, m * P), _F32)
            _im2col(x4, n0, m, *self.geom, self.split, cols)
            Y = np.matmul(self.Wf, cols)
            _fwd_epilogue(Y, self.bias, n0, m, Og, int(self.pq), z, Pa, Qa)
        return z.reshape((N0,) + self.out_shape), (x4, z, Pa, Qa)

    def relevance(self, ctx, R):
        if self.kind == "pass":
            return [R]
        x4, z, Pa, Qa = ctx
        N = x4.shape[0]
        G, P = self.G, self.P
        R3 = _f32(R).reshape(N, self.O, P)
        out = np.empty((N, self.C, self.H, self.W), _F32)
        rows = self.WbT.shape[2]
        for n0 in range(0, N, self.chunk):
            m = min(self.chunk, N - n0)
            Gm = np.empty((G, rows, m * P), _F32)
            _bwd_prologue(R3, z, Pa, Qa, self.const, self.bshift, self.brule, n0, m, self.Og,
                          self.pkind, self.eps, self.c1, self.c2, Gm)
            A = np.matmul(self.WbT, Gm)
            _col2im(A, x4, self.low, self.high, n0, m, *self.geom, self.mode, out)
        return [out.reshape((-1,) + self.in_shape)]


class _MaxPoolOp:
    """Max pooling; relevance to each window's first arg-max (PyTorch's gradient)."""

    def __init__(self, graph, node, rule):
        self.d = int(node.attrs["dims"])
        self.in_shape = tuple(graph[node.inputs[0]].shape)
        self.out_shape = tuple(node.shape)
        g = pool2d_geometry(graph, node)
        self.win = tuple(int(v) for v in (*g.kernel, *g.stride, *g.pad, *g.dilation))

    def forward(self, inputs):
        x4 = _as4d(_f32(inputs[0]), self.d)
        N, C = x4.shape[:2]
        o4 = (N, C) + ((1,) + self.out_shape[1:] if self.d == 1 else self.out_shape[1:])
        out = np.empty(o4, _F32)
        arg = np.empty(o4, np.int32)
        _maxpool_fwd(x4, *self.win, out, arg)
        return out.reshape((N,) + self.out_shape), (arg, x4.shape)

    def relevance(self, ctx, R):
        arg, shape4 = ctx
        N, C, H, W = shape4
        out = np.zeros((N, C, H * W), _F32)
        _maxpool_bwd(_f32(R).reshape(arg.shape), arg, out)
        return [out.reshape((N,) + self.in_shape)]


def _bands(matrix: np.ndarray) -> tuple:
    """One axis of an average pool (:func:`~fastlrp.ops.pool.avgpool_matrices`) as
    per-output windows ``[start, end)`` and their weight."""
    nz = matrix != 0
    s = nz.argmax(axis=1).astype(np.int64)
    e = (matrix.shape[1] - nz[:, ::-1].argmax(axis=1)).astype(np.int64)
    return s, e, matrix[np.arange(matrix.shape[0]), s].astype(np.float64)


class _AvgPoolOp:
    """Average pooling (fixed or adaptive, 1-d or 2-d) as a separable per-channel
    average; Norm or Flat rule per channel."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.d = int(node.attrs["dims"])
        self.in_shape = tuple(graph[node.inputs[0]].shape)
        self.out_shape = tuple(node.shape)
        axes = [_bands(m) for m in avgpool_matrices(self.in_shape, node)]
        if self.d == 1:
            axes.insert(0, (np.zeros(1, np.int64), np.ones(1, np.int64), np.ones(1)))
        (self.hs, self.he, self.wh), (self.ws, self.we, self.ww) = axes
        # Flat: A 1, the weight each output's window puts on ones
        n = ((self.he - self.hs) * self.wh)[:, None] * ((self.we - self.ws) * self.ww)[None, :]
        self.flat_den = _f32(n[None, None])
        self.o4 = (len(self.hs), len(self.ws))

    def forward(self, inputs):
        x4 = _as4d(_f32(inputs[0]), self.d)
        N, C = x4.shape[:2]
        out = np.empty((N, C) + self.o4, _F32)
        _avgpool_fwd(x4, self.hs, self.he, self.wh, self.ws, self.we, self.ww, out)
        return out.reshape((N,) + self.out_shape), (x4, out)

    def relevance(self, ctx, R):
        kind = self.rule.kind
        x4, z = ctx
        out = np.empty_like(x4)
        norm = kind == "norm"
        _avgpool_bwd(_f32(R).reshape(z.shape), z if norm else self.flat_den, x4, self.hs, self.he, self.wh,
                     self.ws, self.we, self.ww, float(self.rule.stabilizer), norm, out)
        return [out.reshape((x4.shape[0],) + self.in_shape)]


class NumbaBackend:
    """Float32 Numba kernels for every node and rule of the reference backend.

    Parameters
    ----------
    num_threads : int, optional
        Threads for the Numba kernels (``numba.set_num_threads``, process-wide);
        default: leave Numba's setting (``NUMBA_NUM_THREADS``, else all cores).
        The GEMMs run in NumPy's BLAS, whose threads follow its own setting
        (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``).
    """

    name = "numba"
    dtype = np.dtype(np.float32)

    def __init__(self, num_threads: int | None = None):
        if num_threads is not None:
            import numba

            numba.set_num_threads(int(num_threads))

    def prepare(self, graph: Graph, node: Node, rule):
        return dispatch_prepare(self, graph, node, rule)


@register_kernel("numba", "dense", "conv", variants="ZBox on a dense layer over several positions: one bound per feature")
def _linear_kernel(be, graph, node, rule):
    if not LinearPlan.supported(graph, node, rule):
        return None
    return _LinearOp(graph, node, rule)


@register_kernel("numba", "maxpool", rules=("winner",))
def _maxpool_kernel(be, graph, node, rule):
    return _MaxPoolOp(graph, node, rule)


@register_kernel("numba", "avgpool", "adaptive_avgpool", rules=("norm", "flat"))
def _avgpool_kernel(be, graph, node, rule):
    return _AvgPoolOp(graph, node, rule)


class _GeluOp:
    """GELU (erf form) as a Numba kernel: NumPy has no erf, and the fallback's
    per-element ``math.erf`` is slow where SciPy is not installed."""

    def forward(self, inputs):
        x = _f32(inputs[0])
        out = np.empty(x.size, _F32)
        _gelu(x.reshape(-1), out)
        return out.reshape(x.shape), None

    def relevance(self, ctx, R):
        return [R]


@register_kernel("numba", "activation", rules=("pass",), variants="gelu only")
def _activation_kernel(be, graph, node, rule):
    return _GeluOp() if node.attrs["kind"] == "gelu" else None  # the rest: the fallback
