"""The compiled CPU backend (:mod:`fastlrp._core`), float32, every op.

Dense and conv layers (1-d and 2-d, stride, padding pairs, dilation, groups,
with or without bias) run on the packed GEMM core for every parametric rule,
following docs/design.md section 3:

- ``prepare`` (once per Explainer) packs every model-constant operand: the
  forward weights W, the positive-part weights W+ (or ``[W+ | W-]`` for signed
  inputs, K doubled), and the backward weights (W^T, W+^T, ``[W+; W-]^T``,
  ``[Wu; Wd]^T``, W^2, ones; spatially flipped for the transposed conv), plus
  the constant sums of ZBox (W+ l + W- h), Flat (tap counts) and WSquare
  (W^2 1 + b^2).
- ``forward`` runs the layer (``out = W x + b``, bias in the GEMM epilogue) and,
  for ZPlus / AlphaBeta / Gamma, one positive-part sum ``psum = W+ x+ + W- x-``:
  just ``W+ x`` when the input is known non-negative (its producer is a ReLU,
  through pools/reshapes, or its minimum is >= 0), computed in the SAME GEMM as
  ``out`` with ``A = [W ; W+]`` (one packing of the image, twice the rows); for
  signed inputs a second GEMM with ``[W+ | W-]`` against ``[x+ ; x-]``, the sign
  split happening while the image tiles are packed. Every other forward sum of these rules follows from
  ``out`` and ``psum`` (``W- x+ + W+ x- = Wx - psum``; Gamma's ``zp`` and ``zn``
  are ``Wx + gamma psum`` and ``Wx + gamma (Wx - psum)``). Both are kept in
  ctx, so several targets share them.
- ``relevance`` (per target) computes ``g = R / s(z)`` in one fused pass
  (``rule_g``; the division depends on the target so it cannot live in the
  forward GEMM's epilogue when targets share the forward), then the backward
  GEMM: one transposed conv (implicit GEMM with flipped weights for stride 1,
  GEMM + col2im otherwise) whose epilogue multiplies by x (or x+, x-, x - l).
  AlphaBeta and Gamma are ONE GEMM with doubled K (``[W+; W-]^T [a ga; -b gb]``);
  a signed input adds the mirrored product for x-.

Flat never builds a GEMM operand from ``R``: ``1^T g`` needs only each group's
sum of g (fused into ``rule_g``), scattered through the taps.

Max pooling runs in C++ (arg-max indices kept in ctx); average pooling (two
float32 BLAS calls, or a mean for a global pool), residual add (Norm, with
``s(sum)`` kept from the forward pass), concat, reshape and activations are
vectorised NumPy float32: they are memory-bound, one or two passes over a
tensor, which NumPy already runs at memory bandwidth.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _ext
from .base import BackendError, Float32Op

__all__ = ["CpuBackend"]

_KIND = {"epsilon": 0, "zplus": 1, "alphabeta": 2, "gamma": 3, "zbox": 4, "flat": 5, "wsquare": 6}
EPI_NONE, EPI_BIAS, EPI_MULX, EPI_MULPOS, EPI_MULNEG, EPI_MULXOFF = range(6)
#: Largest col2im buffer of the strided backward pass (bytes); bigger batches go in chunks.
COL_BUDGET = 32 << 20


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _stab(z, eps):
    return z + np.where(z >= 0, np.float32(eps), np.float32(-eps))


class _LinearOp:
    """A dense or conv node with a parametric rule, on the packed GEMM core.

    A dense layer is a conv over 1x1 images; a 1-d conv a 2-d conv of height 1.
    """

    def __init__(self, core, graph, node, rule, nonneg: bool):
        self.core, self.node, self.rule = core, node, rule
        W = np.asarray(node.params["weight"], dtype=np.float64)
        in_shape = tuple(graph[node.inputs[0]].shape)
        self.in_shape, self.out_shape = in_shape, tuple(node.shape)
        if node.op == "dense":
            if W.ndim != 2:
                raise BackendError(f"{node.describe()}: dense weight must be 2-d (out, in), got shape {W.shape}")
            O, I = W.shape
            if in_shape and int(np.prod(in_shape)) != I:
                raise BackendError(f"{node.describe()}: input shape {in_shape} does not match weight shape {W.shape}")
            W4 = W.reshape(O, I, 1, 1)
            self.G, (self.C, self.H, self.W) = 1, (I, 1, 1)
            self.kernel, self.stride, self.pad, self.dil = (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)
            self.OH, self.OW = 1, 1
        else:
            a = node.attrs
            if a["dims"] == 1:
                W4 = W[:, :, None, :]
                self.C, self.H, self.W = in_shape[0], 1, in_shape[1]
                self.stride, self.dil = (1, a["stride"][0]), (1, a["dilation"][0])
                self.pad = ((0, 0), tuple(a["padding"][0]))
                self.OH, self.OW = 1, node.shape[1]
            else:
                W4 = W
                self.C, self.H, self.W = in_shape
                self.stride, self.dil = tuple(a["stride"]), tuple(a["dilation"])
                self.pad = tuple(tuple(p) for p in a["padding"])
                self.OH, self.OW = node.shape[1], node.shape[2]
            self.G = int(a["groups"])
            self.kernel = W4.shape[2:]
        self.O = W4.shape[0]
        self.Og, self.Cg = self.O // self.G, W4.shape[1]
        if self.Cg * self.G != self.C:
            raise BackendError(f"{node.describe()}: weight {W.shape} with {self.G} groups does not fit input {in_shape}")
        b = node.params.get("bias")
        self.b = None if b is None else _f32(np.asarray(b).reshape(-1))
        kind = rule.kind
        if kind == "alphabeta" and float(rule.beta) == 0.0:
            kind = "zplus"  # AlphaBeta(1, 0) is ZPlus, term by term
        if kind not in _KIND:
            raise BackendError(f"{node.describe()}: rule '{rule.kind}' is not a rule for dense/conv layers")
        self.kind = kind
        self.eps = float(getattr(rule, "epsilon", getattr(rule, "stabilizer", 1e-6)))
        self.zero_bias = bool(getattr(rule, "zero_bias", False))
        self.static_nonneg = nonneg
        self.implicit_bwd = tuple(self.stride) == (1, 1)
        pk = self._pack
        Wp, Wn = np.maximum(W4, 0), np.minimum(W4, 0)
        self.zc = None
        self.A_fwd = self.A_pos = self.A_posneg = self.A_fwd_pos = None
        needs_psum = kind in ("zplus", "alphabeta", "gamma")
        if needs_psum and self.G == 1:
            # one GEMM, one packing of the image for both sums: [W ; W+] x -> (W x + b, W+ x)
            self.A_fwd_pos = pk(np.concatenate([W4.reshape(self.O, -1), Wp.reshape(self.O, -1)], axis=0))
        if not (nonneg and self.A_fwd_pos is not None):
            self.A_fwd = pk(W4.reshape(self.O, -1))
        if needs_psum:
            if self.A_fwd_pos is None:
                self.A_pos = pk(Wp.reshape(self.O, -1))
            if not nonneg:
                self.A_posneg = pk(np.concatenate([Wp.reshape(self.O, -1), Wn.reshape(self.O, -1)], axis=1))
        st = self._stack
        if kind == "epsilon":
            pos_terms, signed_terms = [(W4, EPI_MULX, None)], None
        elif kind == "zplus":
            pos_terms = [(Wp, EPI_MULX, None)]
            signed_terms = [(Wp, EPI_MULPOS, None), (Wn, EPI_MULNEG, None)]
        elif kind in ("alphabeta", "gamma"):
            if kind == "alphabeta":
                U, D = Wp, Wn
            else:
                gm = float(rule.gamma)
                U, D = W4 + gm * Wp, W4 + gm * Wn
            pos_terms = [(st(U, D), EPI_MULX, None)]
            signed_terms = [(st(U, D), EPI_MULPOS, None), (st(D, U), EPI_MULNEG, None)]
        elif kind == "zbox":
            lo, hi = self._bounds(rule, in_shape)
            pos_terms = signed_terms = [(Wp, EPI_MULXOFF, lo), (Wn, EPI_MULXOFF, hi)]
            self.zc = self._const_fwd(graph, lo, Wp, None) + self._const_fwd(graph, hi, Wn, None)
        elif kind == "flat":
            # 1^T g = (sum over a group's outputs of g) scattered through ones: the
            # backward GEMM gets one output channel per group instead of O/G
            ones = np.ones((self.G, self.Cg) + tuple(self.kernel))
            pos_terms = signed_terms = [(ones, EPI_NONE, None)]
            self.zc = self._const_fwd(graph, np.ones(in_shape), np.ones_like(W4), None)
        else:  # wsquare
            W2 = W4 * W4
            pos_terms = signed_terms = [(W2, EPI_NONE, None)]
            bb = None if (self.b is None or self.zero_bias) else np.asarray(node.params["bias"], np.float64) ** 2
            self.zc = self._const_fwd(graph, np.ones(in_shape), W2, bb)
        if self.zc is not None:
            self.zc = _f32(self.zc.reshape(self.O, -1))
        self.bwd_pos = [self._bwd_term(*t) for t in pos_terms]
        if signed_terms is None or signed_terms is pos_terms:
            self.bwd_signed = self.bwd_pos
        else:
            self.bwd_signed = None if nonneg else [self._bwd_term(*t) for t in signed_terms]

    # -- prepare helpers -------------------------------------------------------------
    def _pack(self, A2d, groups=None):
        return self.core.pack_weights(_f32(A2d), self.G if groups is None else groups)

    def _stack(self, U, D):
        """[U; D] stacked per group along the output axis: (G * 2 Og, Cg, KH, KW)."""
        G, Og = self.G, self.Og
        s = U.shape[1:]
        return np.concatenate([U.reshape(G, Og, *s), D.reshape(G, Og, *s)], axis=1).reshape(G * 2 * Og, *s)

    def _bwd_term(self, Wst, epi, off):
        """Packs backward weights for the transposed conv of Wst ((G*O'g, Cg, KH, KW))."""
        G, Cg = self.G, self.Cg
        KH, KW = self.kernel
        Ogs = Wst.shape[0] // G
        Wg = Wst.reshape(G, Ogs, Cg, KH, KW)
        if self.implicit_bwd:
            # y[c] = sum_{o, taps} g[o, h + pad - d k] W[o, c, k]: a conv of g with the
            # spatially flipped, transposed kernel
            Wb = Wg.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1].reshape(G * Cg, Ogs * KH * KW)
        else:
            Wb = Wg.transpose(0, 2, 3, 4, 1).reshape(G * Cg * KH * KW, Ogs)
        return (self._pack(Wb), epi, None if off is None else _f32(off))

    def _bounds(self, rule, in_shape):
        try:
            lo = np.broadcast_to(np.asarray(rule.low, dtype=np.float64), in_shape)
            hi = np.broadcast_to(np.asarray(rule.high, dtype=np.float64), in_shape)
        except ValueError:
            raise BackendError(
                f"{self.node.describe()}: ZBox bounds of shapes {np.shape(rule.low)} / {np.shape(rule.high)} "
                f"do not broadcast to the input shape {in_shape}"
            ) from None
        return np.ascontiguousarray(lo), np.ascontiguousarray(hi)

    def _const_fwd(self, graph, x1, W4mod, b):
        """A model-constant forward sum over one sample (float64, once per Explainer)."""
        from .reference import conv_forward

        Wm = W4mod.reshape(self.node.params["weight"].shape)
        if self.node.op == "dense":
            z = np.asarray(x1, np.float64).reshape(1, -1) @ Wm.T
            return z if b is None else z + b
        return conv_forward(np.asarray(x1, np.float64)[None], Wm, b, self.node.attrs)[0]

    # -- per batch ---------------------------------------------------------------------
    def _conv(self, x4, A, sign=0, epi=EPI_NONE, bias=None, split=0):
        (pt, _), (pl, _) = self.pad
        return self.core.conv_gemm(x4, A, self.kernel, self.stride, (pt, pl), self.dil, (self.OH, self.OW),
                                   sign, epi, bias, None, None, split)

    def forward(self, inputs: list) -> tuple[np.ndarray, Any]:
        x = np.asarray(inputs[0])
        N = x.shape[0] if x.ndim else 0
        if x.ndim < 2 or x[0].size != self.C * self.H * self.W:
            raise BackendError(
                f"{self.node.describe()}: input of shape {x.shape} (batch first) does not fit the layer's "
                f"input shape {self.in_shape}"
            )
        x4 = _f32(x).reshape(N, self.C, self.H, self.W)
        epi = EPI_BIAS if self.b is not None else EPI_NONE
        psum, nonneg = None, True
        needs_psum = self.A_fwd_pos is not None or self.A_pos is not None
        if needs_psum or self.bwd_signed is not self.bwd_pos:
            # skip the negative half when the input is non-negative (by the graph, or as it is)
            nonneg = self.static_nonneg or not (x4.min(initial=0.0) < 0)
        if needs_psum and nonneg and self.A_fwd_pos is not None:
            out, psum = self._conv(x4, self.A_fwd_pos, 0, epi, self.b, split=self.O)
        else:
            out = self._conv(x4, self.A_fwd, 0, epi, self.b)
            if needs_psum:
                psum = self._conv(x4, self.A_pos, 0) if nonneg else self._conv(x4, self.A_posneg, 1)
        return out.reshape((N,) + self.out_shape), (x4, out, psum, nonneg)

    def relevance(self, ctx, R) -> list:
        x4, out, psum, nonneg = ctx
        N = x4.shape[0]
        R4 = _f32(R).reshape(N, self.O, self.OH, self.OW)
        r = self.rule
        g = self.core.rule_g(_KIND[self.kind], R4, out, psum, self.b, self.zc, self.G, self.eps,
                             float(getattr(r, "alpha", 1.0)), float(getattr(r, "beta", 0.0)),
                             float(getattr(r, "gamma", 0.0)), self.zero_bias, self.kind == "flat")
        g = g.reshape(N, -1, self.OH, self.OW)
        terms = self.bwd_pos if nonneg else self.bwd_signed
        res = None
        for A, epi, off in terms:
            res = self._backward(g, A, epi, off, x4, res)
        return [res.reshape((N,) + self.in_shape)]

    def _backward(self, g, A, epi, off, x4, res):
        core = self.core
        (pt, _), (pl, _) = self.pad
        KH, KW = self.kernel
        mul = x4 if epi >= EPI_MULX else None
        if self.implicit_bwd:
            dh, dw = self.dil
            pad = (dh * (KH - 1) - pt, dw * (KW - 1) - pl)
            y = core.conv_gemm(g, A, self.kernel, (1, 1), pad, self.dil, (self.H, self.W), 0, epi, None, mul, off)
            if res is None:
                return y
            res += y
            return res
        N = g.shape[0]
        acc = res is not None
        if self.kind == "flat":  # 1^T g: scatter each group's sum of g through the taps, no GEMM
            return core.col2im(g, (self.H, self.W), self.C, self.kernel, self.stride, (pt, pl), self.dil,
                               (self.OH, self.OW), epi, None, None, res, self.G)
        if not acc:
            res = np.empty((N, self.C, self.H, self.W), np.float32)
        # strided: col = W^T g by GEMM, then the col2im scatter (epilogue there), in
        # chunks of samples so the col buffer stays below COL_BUDGET
        per_sample = self.C * KH * KW * self.OH * self.OW * 4
        chunk = max(1, COL_BUDGET // max(per_sample, 1))
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            col = core.conv_gemm(g[s:e], A, (1, 1), (1, 1), (0, 0), (1, 1), (self.OH, self.OW), 0, EPI_NONE,
                                 None, None, None)
            y = core.col2im(col, (self.H, self.W), self.C, self.kernel, self.stride, (pt, pl), self.dil,
                            (self.OH, self.OW), epi, None if mul is None else mul[s:e], off,
                            res[s:e] if acc else None, 0)
            if not acc:
                res[s:e] = y
        return res


class _MaxPoolOp:
    """Max pooling in C++; relevance to each window's first arg-max (PyTorch's gradient)."""

    def __init__(self, core, graph, node):
        self.core, self.node = core, node
        a = node.attrs
        ins = tuple(graph[node.inputs[0]].shape)
        self.in_shape, self.out_shape = ins, tuple(node.shape)
        d = a["dims"]
        dil = tuple(a.get("dilation", (1,) * d))
        if d == 1:
            self.C, self.H, self.W = ins[0], 1, ins[1]
            self.kernel, self.stride, self.dil = (1, a["kernel"][0]), (1, a["stride"][0]), (1, dil[0])
            self.pad = (0, a["padding"][0][0])
            self.OH, self.OW = 1, node.shape[1]
        else:
            self.C, self.H, self.W = ins
            self.kernel, self.stride, self.dil = tuple(a["kernel"]), tuple(a["stride"]), dil
            self.pad = (a["padding"][0][0], a["padding"][1][0])
            self.OH, self.OW = node.shape[1], node.shape[2]

    def forward(self, inputs):
        x = inputs[0]
        N = x.shape[0]
        x4 = _f32(x).reshape(N, self.C, self.H, self.W)
        y, idx = self.core.maxpool_forward(x4, self.kernel, self.stride, self.pad, self.dil, (self.OH, self.OW))
        return y.reshape((N,) + self.out_shape), idx

    def relevance(self, idx, R):
        N = idx.shape[0]
        r = self.core.maxpool_backward(_f32(R).reshape(idx.shape), idx, (self.H, self.W))
        return [r.reshape((N,) + self.in_shape)]


class _AvgPoolOp:
    """Average / adaptive average pooling as separable per-axis matrices (float32,
    one BLAS call per axis); Norm rule per channel (the layer's own averages as
    denominators, kept from the forward pass for every target). A global
    average is a mean."""

    def __init__(self, graph, node, rule):
        from .reference import _AvgPoolOp as RefAvg

        ref = RefAvg(graph, node, rule)
        self.node, self.rule = node, rule
        self.mats = [_f32(m) for m in ref.mats]
        self.eps = float(getattr(rule, "stabilizer", getattr(rule, "epsilon", 1e-6)))
        self.global_mean = node.op == "adaptive_avgpool" and all(s == 1 for s in node.shape[1:])
        self.flat_z = None
        if rule.kind == "flat":
            in_shape = tuple(graph[node.inputs[0]].shape)
            self.flat_z = _stab(self._apply(np.ones((1,) + in_shape, np.float32), self.mats), self.eps)

    @staticmethod
    def _apply(x, mats, transpose=False):
        # along the last axis: one GEMM over all (n, c, ...) rows
        lead = x.shape[:-len(mats)]
        y = x
        for i, m in enumerate(mats[::-1]):  # last axis first
            mt = m if transpose else m.T  # (in, out) or (out, in).T
            y = np.moveaxis(y, -1 - i, -1)
            shp = y.shape
            y = (np.ascontiguousarray(y).reshape(-1, shp[-1]) @ mt).reshape(shp[:-1] + (mt.shape[1],))
            y = np.moveaxis(y, -1, -1 - i)
        return np.ascontiguousarray(y).reshape(lead + y.shape[len(lead):])

    def forward(self, inputs):
        x = _f32(inputs[0])
        if self.global_mean:
            out = x.reshape(x.shape[:2] + (-1,)).mean(axis=2, dtype=np.float32).reshape(x.shape[:2] + self.node.shape[1:])
        else:
            out = self._apply(x, self.mats)
        s = None if self.rule.kind in ("flat", "pass") else _stab(out, self.eps)
        return out, (x, s)

    def relevance(self, ctx, R):
        x, s = ctx
        k = self.rule.kind
        if k == "pass":
            raise BackendError(f"{self.node.describe()}: Pass cannot change the shape of relevance")
        R = _f32(R)
        g = R / (self.flat_z if k == "flat" else s)
        if self.global_mean:
            back = np.broadcast_to(g.reshape(g.shape[:2] + (1,) * (x.ndim - 2)) / np.float32(np.prod(x.shape[2:])),
                                   x.shape)
        else:
            back = self._apply(g, self.mats, transpose=True)
        return [np.ascontiguousarray(back) if k == "flat" else x * back]


class _AddOp:
    """Residual add; Norm rule: each summand gets its share of the sum (float32)."""

    def __init__(self, node, rule):
        self.node, self.rule = node, rule

    def forward(self, inputs):
        xs = [_f32(i) for i in inputs]
        out = xs[0].copy()
        for t in xs[1:]:
            out += t
        s = None if self.rule.kind == "pass" else _stab(out, float(getattr(self.rule, "stabilizer", 1e-6)))
        return out, (xs, s)  # s(sum) is target-independent: kept for every target

    def relevance(self, ctx, R):
        xs, s = ctx
        R = _f32(R)
        if self.rule.kind == "pass":
            return [R / np.float32(len(xs)) for _ in xs]
        g = R / s
        return [x * g for x in xs]


class CpuBackend:
    """Compiled C++ kernels, float32, OpenMP threads.

    Parameters
    ----------
    num_threads : int, optional
        Threads for the kernels (process-wide setting of ``fastlrp._core``);
        default: leave it as it is (OpenMP's default, usually all cores).
    """

    name = "cpu"
    dtype = np.dtype(np.float32)

    def __init__(self, num_threads: Optional[int] = None, core=None):
        core = core if core is not None else _ext.core
        if core is None:
            raise BackendError(f"the compiled CPU backend is not available: {_ext.core_error}")
        self.core = core
        if num_threads is not None:
            self.core.set_num_threads(int(num_threads))
        self._reference = None

    def _ref(self):
        if self._reference is None:
            from .reference import ReferenceBackend

            self._reference = ReferenceBackend()
        return self._reference

    def prepare(self, graph, node, rule):
        op = node.op
        if op in ("dense", "conv"):
            if rule.kind == "pass":
                return Float32Op(self._ref().prepare(graph, node, rule))
            return _LinearOp(self.core, graph, node, rule, graph.known_nonnegative(node.inputs[0]))
        if op == "maxpool":
            if rule.kind == "norm":  # the opt-in proportional variant
                return Float32Op(self._ref().prepare(graph, node, rule))
            return _MaxPoolOp(self.core, graph, node)
        if op in ("avgpool", "adaptive_avgpool"):
            return _AvgPoolOp(graph, node, rule)
        if op == "add":
            return _AddOp(node, rule)
        # input, reshape, permute, concat, activation, batchnorm: NumPy in float32
        return Float32Op(self._ref().prepare(graph, node, rule))
