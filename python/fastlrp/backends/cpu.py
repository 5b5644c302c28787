"""The compiled CPU backend (:mod:`fastlrp._core`), float32; ``precision="bf16"`` rounds the
inputs of its GEMMs to bfloat16 (float32 sums; docs/precision.md).

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
  split happening while the image tiles are packed (Gamma: ``|W|`` against ``|x|``,
  ``psum = (Wx + |W||x|) / 2``, LinearPlan's ``abs_form``). Every other forward sum of these rules follows from
  ``out`` and ``psum`` (``W- x+ + W+ x- = Wx - psum``; Gamma's ``zp`` and ``zn``
  are ``Wx + gamma psum`` and ``Wx + gamma (Wx - psum)``). Both are kept in
  ctx, so several targets share them.
- ``relevance`` (per target) computes ``g = R / s(z)`` in one fused pass
  (``rule_g``; the division depends on the target so it cannot live in the
  forward GEMM's epilogue when targets share the forward), then the backward
  GEMM: one transposed conv (implicit GEMM with flipped weights for stride 1,
  GEMM + col2im otherwise) whose epilogue multiplies by x (or x+, x-, x - l).
  AlphaBeta and Gamma are ONE GEMM with doubled K (``[W+; W-]^T [a ga; -b gb]``);
  a signed input adds the mirrored product for x- (Gamma instead: ``W^T (g0 + g1)``
  times x and ``|W|^T (g0 - g1)`` times |x|, rule_g's ``sumdiff`` planes).

Flat never builds a GEMM operand from ``R``: ``1^T g`` needs only each group's
sum of g (fused into ``rule_g``), scattered through the taps.

Products of two activations (``matmul``: attention's ``q k^T`` and ``A v``, their
relevance products) run as one batched product of the core per product
(:func:`grouped_matmul`, src/cpp/matmul_cpu.h: operands read in place through their
strides, the relevance products' multiply by an operand fused), with the registry's
rule arithmetic around them; ctx keeps ``z`` and each target's ``R / s(z)`` is one
compiled pass.

The memory-bound ops of transformers run compiled (src/cpp/elementwise_cpu.cpp, one
pass per row or element, docs/transformers.md "Kernels and memory"): GELU (erf and
tanh) and SiLU with Pass; ``batchnorm`` with Pass (the per-channel affine map, e.g.
the attention's score scale); ``layernorm`` over trailing axes with Epsilon (std held
constant; ``zero_bias``, ``guard``) or Pass; ``softmax`` along the last axis with
Taylor or Pass; ``add`` of same-shape inputs with Norm (``guard``). (CP-LRP's softmax
and ``q k^T`` run no relevance pass: the plan silences the attention weights.)

Max pooling runs in C++ (arg-max indices kept in ctx); average pooling runs as
two float32 BLAS calls (or a mean for a global pool). Every other op and variant
(concat, reshape, pad, other activations, Gradient rules, a broadcast add, ...) runs
the one fallback of :mod:`fastlrp.backends.dispatch`, the registry's NumPy
implementation in float32: mostly copies or one pass over a tensor.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _ext
from ..ops.attention import MatmulReference
from ..ops.linear import PARAMETRIC_RULES
from ..ops.merge import unbroadcast
from ..ops.pool import pool2d_geometry, separable_matrices
from ..rules import stabilizer_of
from .base import BackendError
from .dispatch import prepare as dispatch_prepare
from .dispatch import register_kernel
from .linear_plan import MUL_EPILOGUES, LinearPlan

__all__ = ["PRECISIONS", "CpuBackend"]

#: Precisions of the dense/conv products: float32, or bfloat16 operands summed in float32.
PRECISIONS = ("float32", "bf16")

#: Largest col2im buffer of the strided backward pass (bytes); bigger batches go in chunks.
COL_BUDGET = 32 << 20


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _stab(z, eps):
    return z + np.where(z >= 0, np.float32(eps), np.float32(-eps))


class _LinearOp:
    """A dense or conv node with a parametric rule, on the packed GEMM core
    (the model-constant operands come from :class:`LinearPlan`, packed here)."""

    def __init__(self, core, graph, node, rule, nonneg: bool, precision: str = "float32"):
        self.core, self.node, self.rule, self.precision = core, node, rule, precision
        self.plan = p = LinearPlan(graph, node, rule, nonneg)
        self.epi = dict(core.epilogues)
        self.rule_code = dict(core.rule_kinds)[p.kind]
        self.implicit_bwd = tuple(p.stride) == (1, 1)
        # every product of a dense layer (or a 1x1 conv of 1x1 images) runs on S images of 1x1:
        # weights packed for the core's sample-rows driver (tiles of samples x features)
        self.rows = (p.G == 1 and (p.H, p.W, p.OH, p.OW) == (1, 1, 1, 1) and tuple(p.kernel) == (1, 1)
                     and all(v == 0 for pair in p.pad for v in pair))
        (self.A_fwd_pos, self.A_fwd, self.A_pos, self.A_posneg, self.A_abs, self.bwd_pos,
         self.bwd_signed) = p.operands(self._pack, self._bwd_term)
        # Epsilon on weights the core packed for sample rows (not every bf16 kernel does): the
        # backward GEMM computes g = R / s(out - bz) as it packs R (no g array)
        self.fused_quotient = self.implicit_bwd and p.kind == "epsilon" and self.bwd_pos[0][0].rows

    # -- prepare helpers -------------------------------------------------------------
    def _pack(self, A2d):
        return self.core.pack_weights(_f32(A2d), self.plan.G, self.precision, rows=self.rows)

    def _bwd_term(self, Wst, epi, off):
        """Packs backward weights for the transposed conv of Wst ((G*O'g, Cg, KH, KW))."""
        p = self.plan
        G, Cg = p.G, p.Cg
        KH, KW = p.kernel
        Ogs = Wst.shape[0] // G
        Wg = Wst.reshape(G, Ogs, Cg, KH, KW)
        if self.implicit_bwd:
            # y[c] = sum_{o, taps} g[o, h + pad - d k] W[o, c, k]: a conv of g with the
            # spatially flipped, transposed kernel
            Wb = Wg.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1].reshape(G * Cg, Ogs * KH * KW)
        else:
            Wb = Wg.transpose(0, 2, 3, 4, 1).reshape(G * Cg * KH * KW, Ogs)
        return (self._pack(Wb), self.epi[epi], epi in MUL_EPILOGUES, None if off is None else _f32(off))

    # -- per batch ---------------------------------------------------------------------
    # A dense layer runs its S = batch x positions samples as S images of 1x1: the core
    # packs B straight from the rows of x (a transpose into its micro-panels) and writes
    # each output tile as rows of features (rows_layout / sink_features in gemm_impl.h),
    # so no transposed copy of x, R or the results is made.
    def _conv(self, x4, A, sign=0, epi=None, bias=None, split=0):
        p = self.plan
        (pt, _), (pl, _) = p.pad
        return self.core.conv_gemm(x4, A, p.kernel, p.stride, (pt, pl), p.dil, (p.OH, p.OW),
                                   sign, self.epi["none"] if epi is None else epi, bias, None, None, split)

    def forward(self, inputs: list) -> tuple[np.ndarray, Any]:
        p = self.plan
        x = np.asarray(inputs[0])
        N = x.shape[0] if x.ndim else 0
        if x.ndim < 2 or x[0].size != p.rows * p.C * p.H * p.W:
            raise BackendError(
                f"{self.node.describe()}: input of shape {x.shape} (batch first) does not fit the layer's "
                f"input shape {p.in_shape}"
            )
        S = N * p.rows
        x4 = _f32(x).reshape(S, p.C, p.H, p.W)
        epi = self.epi["bias"] if p.b is not None else self.epi["none"]
        psum, nonneg = None, True
        if p.needs_psum or self.bwd_signed is not self.bwd_pos:
            # skip the negative half when the input is non-negative (by the graph, or as it is)
            nonneg = p.static_nonneg or not (x4.min(initial=0.0) < 0)
        if p.needs_psum and nonneg and self.A_fwd_pos is not None:
            out, psum = self._conv(x4, self.A_fwd_pos, 0, epi, p.b, split=p.O)
        else:
            out = self._conv(x4, self.A_fwd, 0, epi, p.b)
            if p.needs_psum and nonneg:
                psum = self._conv(x4, self.A_pos, 0)
            elif p.needs_psum and p.abs_form:  # psum = (W x + b + |W| |x| - b) / 2
                if p.neg_b is None:
                    psum = self._conv(x4, self.A_abs, 2)
                else:
                    psum = self._conv(x4, self.A_abs, 2, self.epi["bias"], p.neg_b)
                psum += out
                psum *= np.float32(0.5)
            elif p.needs_psum:
                psum = self._conv(x4, self.A_posneg, 1)
        return out.reshape((N,) + p.out_shape), (x4, out, psum, nonneg, S)

    def relevance(self, ctx, R) -> list:
        p = self.plan
        x4, out, psum, nonneg, S = ctx
        R4 = _f32(R).reshape(S, p.O, p.OH, p.OW)
        quotient = None
        sumdiff = p.abs_form and not nonneg  # g's sum and difference planes, one per term
        if self.fused_quotient:
            g, quotient = R4, (out, p.b if p.zero_bias else None, p.eps)
        else:
            g = self.core.rule_g(self.rule_code, R4, out, psum, p.b, p.zc, p.G, p.eps, p.alpha,
                                 p.beta, p.gamma, p.zero_bias, p.kind == "flat", sumdiff)
            g = g.reshape(((2, S) if sumdiff else (S,)) + (-1, p.OH, p.OW))
        terms = self.bwd_pos if nonneg else self.bwd_signed
        res = None
        for i, term in enumerate(terms):
            res = self._backward(g[i] if sumdiff else g, term, x4, res, quotient)
        return [res.reshape((-1,) + p.in_shape)]

    def _backward(self, g, term, x4, res, quotient=None):
        A, epi, needs_x, off = term
        core, p = self.core, self.plan
        (pt, _), (pl, _) = p.pad
        KH, KW = p.kernel
        mul = x4 if needs_x else None
        if self.implicit_bwd:
            dh, dw = p.dil
            pad = (dh * (KH - 1) - pt, dw * (KW - 1) - pl)
            qz, qb, qeps = quotient or (None, None, 0.0)
            y = core.conv_gemm(g, A, p.kernel, (1, 1), pad, p.dil, (p.H, p.W), 0, epi, None, mul, off, 0, qz, qb,
                               qeps)
            if res is None:
                return y
            res += y
            return res
        N = g.shape[0]
        acc = res is not None
        if p.kind == "flat":  # 1^T g: scatter each group's sum of g through the taps, no GEMM
            return core.col2im(g, (p.H, p.W), p.C, p.kernel, p.stride, (pt, pl), p.dil,
                               (p.OH, p.OW), epi, None, None, res, p.G)
        if not acc:
            res = np.empty((N, p.C, p.H, p.W), np.float32)
        # strided: col = W^T g by GEMM, then the col2im scatter (epilogue there), in
        # chunks of samples so the col buffer stays below COL_BUDGET
        per_sample = p.C * KH * KW * p.OH * p.OW * 4
        chunk = max(1, COL_BUDGET // max(per_sample, 1))
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            col = core.conv_gemm(g[s:e], A, (1, 1), (1, 1), (0, 0), (1, 1), (p.OH, p.OW), 0, self.epi["none"],
                                 None, None, None)
            y = core.col2im(col, (p.H, p.W), p.C, p.kernel, p.stride, (pt, pl), p.dil,
                            (p.OH, p.OW), epi, None if mul is None else mul[s:e], off,
                            res[s:e] if acc else None, 0)
            if not acc:
                res[s:e] = y
        return res


class _MaxPoolOp:
    """Max pooling in C++; relevance to each window's first arg-max (PyTorch's gradient)."""

    def __init__(self, core, graph, node):
        self.core, self.node = core, node
        self.geo = pool2d_geometry(graph, node)
        self.in_shape, self.out_shape = tuple(graph[node.inputs[0]].shape), tuple(node.shape)

    def forward(self, inputs):
        x = inputs[0]
        N, g = x.shape[0], self.geo
        x4 = _f32(x).reshape(N, g.C, g.H, g.W)
        y, idx = self.core.maxpool_forward(x4, g.kernel, g.stride, g.pad, g.dilation, (g.OH, g.OW))
        return y.reshape((N,) + self.out_shape), idx

    def relevance(self, idx, R):
        N = idx.shape[0]
        r = self.core.maxpool_backward(_f32(R).reshape(idx.shape), idx, (self.geo.H, self.geo.W))
        return [r.reshape((N,) + self.in_shape)]


class _AvgPoolOp:
    """Average / adaptive average pooling as separable per-axis matrices (float32,
    one BLAS call per axis); Norm rule per channel (the layer's own averages as
    denominators, kept from the forward pass for every target). A global
    average is a mean."""

    def __init__(self, graph, node, rule):
        self.node, self.rule = node, rule
        self.mats = [_f32(m) for m in separable_matrices(graph[node.inputs[0]].shape, node)]
        self.eps = stabilizer_of(rule)
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
        s = None if self.rule.kind == "flat" else _stab(out, self.eps)
        return out, (x, s)

    def relevance(self, ctx, R):
        x, s = ctx
        k = self.rule.kind
        R = _f32(R)
        g = R / (self.flat_z if k == "flat" else s)
        if self.global_mean:
            back = np.broadcast_to(g.reshape(g.shape[:2] + (1,) * (x.ndim - 2)) / np.float32(np.prod(x.shape[2:])),
                                   x.shape)
        else:
            back = self._apply(g, self.mats, transpose=True)
        return [np.ascontiguousarray(back) if k == "flat" else x * back]


class CpuBackend:
    """Compiled C++ kernels, float32, OpenMP threads.

    Parameters
    ----------
    num_threads : int, optional
        Threads for the kernels (process-wide setting of ``fastlrp._core``);
        default: leave it as it is (OpenMP's default, usually all cores).
    precision : ``"float32"`` (default) or ``"bf16"``
        ``"bf16"``: the dense and conv products (forward sums and relevance products)
        round their operands to bfloat16 and sum in float32, on the AMX-BF16 tiles of
        Intel CPUs from Sapphire Rapids on, or with AVX512_BF16 (BackendError naming
        what is missing elsewhere). Everything else stays float32: grouped convs with few rows and
        a short K (depthwise), attention's activation products, the rules' arithmetic.
        Heatmap agreement with the float64 reference: docs/precision.md.
    """

    name = "cpu"
    dtype = np.dtype(np.float32)

    def __init__(self, num_threads: Optional[int] = None, core=None, precision: str = "float32"):
        core = core if core is not None else _ext.core
        if core is None:
            raise BackendError(f"the compiled CPU backend is not available: {_ext.core_error}")
        if precision not in PRECISIONS:
            raise ValueError(f"CpuBackend: precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16":
            why = core.bf16_unavailable() if hasattr(core, "bf16_unavailable") else (
                "this build of fastlrp._core predates the bfloat16 kernel")
            if why:
                raise BackendError(f"CpuBackend: precision='bf16' is unavailable: {why}")
        self.core, self.precision = core, precision
        if num_threads is not None:
            self.core.set_num_threads(int(num_threads))

    def __repr__(self):
        return f"CpuBackend(precision={self.precision!r})"

    def prepare(self, graph, node, rule):
        return dispatch_prepare(self, graph, node, rule)


@register_kernel("cpu", "dense", "conv", rules=tuple(k for k in PARAMETRIC_RULES if k != "pass"),
                 variants="ZBox on a dense layer over several positions: one bound per feature")
def _linear_kernel(be, graph, node, rule):
    if not LinearPlan.supported(graph, node, rule):
        return None
    return _LinearOp(be.core, graph, node, rule, graph.known_nonnegative(node.inputs[0]), be.precision)


def grouped_matmul(core, a, b, mul=None):
    """``a @ b`` (times ``mul`` elementwise when given) of float32 stacks of matrices, with NumPy
    broadcasting of the leading axes, as one ``batched_matmul`` of the core (src/cpp/matmul_cpu.h):
    every operand is read in place through its strides, so transposed and permuted views (the
    heads of q, k and v, ``k^T``, ``a^T``) and broadcast axes (zero strides) cost no copy, and the
    product goes straight into a C-contiguous result. float32 in the backend's bf16 mode too:
    rounding both activations to bfloat16 per call would cost about what the bf16 products save
    (with the former grouped GEMM on ViT-B/16, batch 16, the matmul nodes took 3.0 s in bf16
    against 2.0 s, 2-vCPU Xeon family 6 model 167)."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, lead + a.shape[-2:])
    b = np.broadcast_to(b, lead + b.shape[-2:])
    if mul is not None:
        mul = np.broadcast_to(mul, lead + (a.shape[-2], b.shape[-1]))
    return core.batched_matmul(a, b, mul)


def _swap(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


class _MatmulOp(MatmulReference):
    """The registry's matmul rules on the core's batched products: the operands stay the views
    they arrive as (ctx keeps them and ``z``), every transpose is a stride, each target's
    ``R / s(z)`` (doubled for UniformEpsilon) is one compiled pass, and each relevance product
    multiplies by its operand in the product's epilogue: ``R_a = a * (g b^T)``, ``R_b = b * (a^T g)``
    (with ``transpose_b``, ``b`` as stored: ``b * (g^T a)``)."""

    def __init__(self, core, graph, node, rule):
        super().__init__(graph, node, rule)
        self.core = core

    def forward(self, inputs):
        a, b = (np.asarray(x, dtype=np.float32) for x in inputs)
        b = _swap(b) if self.tb else b  # (..., k, n)
        z = grouped_matmul(self.core, a, b)
        return z, (a, b, z)

    def relevance(self, ctx, R):
        # (CP-LRP's q k^T and softmax get no relevance at all: the plan silences the weights)
        a, b, z = ctx
        g = self.core.stabilized_quotient(_f32(R), z, self.rule.epsilon, 1.0 if self.keep is not None else 2.0)
        # the gate's zeros as a view (the plan sends nothing along it; reports sum it)
        out = [np.broadcast_to(np.float32(0), (R.shape[0],) + s) for s in self.shapes]
        if self.keep != 1:
            out[0] = unbroadcast(grouped_matmul(self.core, g, _swap(b), mul=a), self.shapes[0])
        if self.keep != 0:
            rb = (grouped_matmul(self.core, _swap(g), a, mul=_swap(b)) if self.tb
                  else grouped_matmul(self.core, _swap(a), g, mul=b))
            out[1] = unbroadcast(rb, self.shapes[1])
        return out


@register_kernel("cpu", "matmul")
def _matmul_kernel(be, graph, node, rule):
    return _MatmulOp(be.core, graph, node, rule)


class _PassOp:
    """An elementwise forward of the core; Pass hands relevance through."""

    def __init__(self, forward):
        self.f = forward

    def forward(self, inputs):
        return self.f(_f32(inputs[0])), None

    def relevance(self, ctx, R):
        return [R]


@register_kernel("cpu", "activation", rules=("pass",), variants="gelu, gelu_tanh, silu")
def _activation_kernel(be, graph, node, rule):
    kinds = be.core.activation_kinds
    kind = node.attrs["kind"]
    if kind not in kinds:
        return None
    code = kinds.index(kind)
    return _PassOp(lambda x: be.core.activation(code, x))


@register_kernel("cpu", "batchnorm", rules=("pass",))
def _batchnorm_kernel(be, graph, node, rule):
    scale, shift = _f32(node.params["scale"]), _f32(node.params["shift"])
    inner = int(np.prod(node.shape[1:]))  # (per-sample axis 0 is the channel axis)
    return _PassOp(lambda x: be.core.channel_affine(x.reshape(x.shape[:2] + (inner,)), scale, shift).reshape(x.shape))


class _LayerNormOp:
    """LayerNorm / RMSNorm over the trailing per-sample axes, one pass of the core per row of
    C features each way; the epsilon rule with std held constant (zero_bias, guard)."""

    def __init__(self, core, node, rule, C, w, b):
        self.core, self.rule, self.C, self.w, self.b = core, rule, C, w, b
        self.eps = float(node.attrs.get("eps", 1e-5))
        self.rms = bool(node.attrs.get("rms", False))

    def forward(self, inputs):
        x = _f32(inputs[0])
        y, std = self.core.layernorm_forward(x, self.C, self.w, self.b, self.eps, self.rms)
        return y, (None if self.rule.kind == "pass" else (x, std, y))

    def relevance(self, ctx, R):
        r = self.rule
        if r.kind == "pass":
            return [R]
        x, std, y = ctx
        return [self.core.layernorm_relevance(x, y, std, self.w, self.b if r.zero_bias else None, _f32(R), self.C,
                                              r.epsilon, r.guard == "zero", self.rms)]


@register_kernel("cpu", "layernorm", options=("guard",),
                 variants="normalised axes trailing, weight and bias constant along the others")
def _layernorm_kernel(be, graph, node, rule):
    shape = tuple(node.shape)
    axes = tuple(node.attrs["axes"])
    lead = len(shape) - len(axes)
    if axes != tuple(range(lead, len(shape))):
        return None
    params = []
    for k in ("weight", "bias"):
        p = node.params.get(k)
        if p is not None:
            if any(d != 1 for d in p.shape[:lead]):
                return None
            p = _f32(np.broadcast_to(p.reshape(p.shape[lead:]), shape[lead:])).reshape(-1)
        params.append(p)
    return _LayerNormOp(be.core, node, rule, int(np.prod(shape[lead:])), *params)


class _SoftmaxOp:
    """Softmax along the last axis in one compiled pass per row; Taylor's relevance likewise."""

    def __init__(self, core, rule):
        self.core, self.rule = core, rule

    def forward(self, inputs):
        x = _f32(inputs[0])
        y = self.core.softmax_forward(x)
        return y, (None if self.rule.kind == "pass" else (x, y))

    def relevance(self, ctx, R):
        if self.rule.kind == "pass":
            return [R]
        x, y = ctx
        return [self.core.softmax_taylor(x, y, _f32(R))]


@register_kernel("cpu", "softmax", variants="the last axis")
def _softmax_kernel(be, graph, node, rule):
    if node.attrs["axis"] != len(node.shape) - 1:
        return None
    return _SoftmaxOp(be.core, rule)


class _AddOp:
    """Norm on a sum of same-shape inputs: ctx keeps the sum, each target's shares
    ``x_i R / s(sum)`` are one compiled pass (NumPy's ``s(sum)`` in the forward pass cost
    more than the sum)."""

    def __init__(self, core, rule):
        self.core, self.rule = core, rule

    def forward(self, inputs):
        xs = [_f32(x) for x in inputs]
        shape = np.broadcast_shapes(*[x.shape for x in xs])  # a batch-1 constant operand
        xs = [x if x.shape == shape else np.ascontiguousarray(np.broadcast_to(x, shape)) for x in xs]
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        return out, (xs, out)

    def relevance(self, ctx, R):
        xs, out = ctx
        r = self.rule
        return self.core.norm_shares(_f32(R), out, xs, r.stabilizer, r.guard == "zero")


@register_kernel("cpu", "add", rules=("norm",), options=("guard",), variants="inputs of one per-sample shape")
def _add_kernel(be, graph, node, rule):
    if any(tuple(graph[i].shape) != tuple(node.shape) for i in node.inputs):
        return None
    return _AddOp(be.core, rule)


@register_kernel("cpu", "maxpool", rules=("winner",))
def _maxpool_kernel(be, graph, node, rule):
    return _MaxPoolOp(be.core, graph, node)


@register_kernel("cpu", "avgpool", "adaptive_avgpool", "upsample", rules=("norm", "flat"))
def _avgpool_kernel(be, graph, node, rule):
    return _AvgPoolOp(graph, node, rule)
