"""Host-side preparation of a dense or conv node for the GEMM kernels of the
compiled CPU backend and the GPU backend (docs/design.md section 3).

A :class:`LinearPlan` computes, once per Explainer, every model-constant
operand of a parametric rule in float64, unpacked: the forward matrices
(``W``; ``[W ; W+]`` so that one GEMM gives ``W x + b`` and ``W+ x``; ``W+``;
``[W+ | W-]`` against ``[x+ ; x-]`` for signed inputs, or ``|W|`` against ``|x|``
for Gamma's, see :class:`LinearPlan`'s ``abs_form``), the backward terms
(a stacked weight ``(G * O'g, Cg, KH, KW)``, the epilogue that multiplies the
transposed product by ``x``, ``x+``, ``x-`` or ``x - offset``, and the offset),
and the constant sums of ZBox (``W+ l + W- h``), Flat (tap counts) and WSquare
(``W^2 1 + b^2``). Each backend then lays the matrices out as its kernels want
them (packed panels on the CPU, row-major device matrices on the GPU).

Rule kinds and epilogues are named here; their integer codes come from the
extension module's ``rule_kinds`` and ``epilogues`` tables (one C++ definition).
"""

from __future__ import annotations

import numpy as np

from ..ops.linear import conv2d_geometry, conv_forward
from ..rules import stabilizer_of
from .base import zbox_bounds

__all__ = ["LinearPlan", "MUL_EPILOGUES"]

#: Epilogues of the backward product that multiply by the layer input (they need x).
MUL_EPILOGUES = ("mulx", "mulpos", "mulneg", "mulxoff", "mulabs")


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class LinearPlan:
    """Everything model-constant a dense/conv kernel needs for one rule.

    Attributes (beyond the :class:`~fastlrp.ops.linear.Conv2dGeometry` fields,
    copied onto the plan): ``kind`` (the rule kind the kernels run; AlphaBeta(1, 0)
    runs as ZPlus, term by term), ``eps``, ``zero_bias``, ``b`` (float32 bias or
    None), ``static_nonneg``; the forward matrices ``fwd_pos``, ``fwd``, ``pos``,
    ``posneg``, ``absw`` (2-d float64, None where not needed); ``pos_terms`` and
    ``signed_terms`` (backward terms for non-negative and signed inputs;
    ``signed_terms is pos_terms`` when the sign of x does not matter, None when
    the input is known non-negative); ``zc`` (float32 constant sums or None).

    ``abs_form``: Gamma on a signed input runs on ``W`` and ``|W|`` alone (the kernels'
    ``|x|`` packing, the ``mulabs`` epilogue and rule_g's ``sumdiff``; docs/design.md 3.3
    and 3.5), its ``|W| |x|`` GEMM adding ``neg_b = -b`` (float32 or None). With ``P = (W + |W|) / 2`` and ``N = (W - |W|) / 2``, the
    positive-part sum is ``psum = (W x + |W| |x|) / 2`` (one GEMM against ``|x|``
    instead of ``[W+ | W-]`` against ``[x+ ; x-]``, K halved), and the relevance
    ``x+ (U^T a + D^T b) + x- (D^T a + U^T b)`` with ``U = W + gamma P``,
    ``D = W + gamma N`` is ``(1 + gamma/2) x W^T (a + b) + (gamma/2) |x| |W|^T (a - b)``:
    two products with K = O instead of two with K = 2 O. 4 GEMM units per layer
    instead of 7. ZPlus and AlphaBeta keep the split sums: their numerators vanish
    term by term where a sum is 0 (no positive, or no negative, contribution), which
    the ``|W|`` form would only reach up to rounding, scaled by ``R / stabilizer``.
    """

    def __init__(self, graph, node, rule, nonneg: bool):
        self.node, self.rule = node, rule
        geo = conv2d_geometry(graph, node)
        self.geometry = geo
        self.in_shape, self.out_shape = tuple(graph[node.inputs[0]].shape), tuple(node.shape)
        self.C, self.H, self.W, self.O, self.G = geo.C, geo.H, geo.W, geo.O, geo.G
        self.kernel, self.stride, self.pad, self.dil = geo.kernel, geo.stride, geo.pad, geo.dilation
        self.OH, self.OW, self.Og, self.Cg = geo.OH, geo.OW, geo.Og, geo.Cg
        self.rows = geo.rows  # a dense layer's leading positions, folded into the batch by the kernels
        self.row_shape = self.in_shape[-1:] if node.op == "dense" else self.in_shape
        W4 = geo.weight
        b = node.params.get("bias")
        self.b = None if b is None else _f32(np.asarray(b).reshape(-1))
        kind = rule.kind
        if kind == "alphabeta" and float(rule.beta) == 0.0:
            kind = "zplus"  # AlphaBeta(1, 0) is ZPlus, term by term
        self.kind = kind
        self.eps = stabilizer_of(rule)
        self.alpha = float(getattr(rule, "alpha", 1.0))
        self.beta = float(getattr(rule, "beta", 0.0))
        self.gamma = float(getattr(rule, "gamma", 0.0))
        self.zero_bias = bool(getattr(rule, "zero_bias", False))
        self.static_nonneg = nonneg
        O = self.O
        Wp, Wn = np.maximum(W4, 0), np.minimum(W4, 0)
        self.zc = None
        self.fwd_pos = self.fwd = self.pos = self.posneg = self.absw = None
        self.needs_psum = kind in ("zplus", "alphabeta", "gamma")
        self.abs_form = kind == "gamma" and not nonneg
        # psum = (W x + b + |W| |x| - b) / 2: the same rounding on every backend
        self.neg_b = None if (self.b is None or not self.abs_form) else -self.b
        if self.needs_psum and self.G == 1:
            # one GEMM, one packing of the image for both sums: [W ; W+] x -> (W x + b, W+ x)
            self.fwd_pos = np.concatenate([W4.reshape(O, -1), Wp.reshape(O, -1)], axis=0)
        if not (nonneg and self.fwd_pos is not None):
            self.fwd = W4.reshape(O, -1)
        if self.needs_psum:
            if self.fwd_pos is None:
                self.pos = Wp.reshape(O, -1)
            if self.abs_form:
                self.absw = np.abs(W4).reshape(O, -1)
            elif not nonneg:
                self.posneg = np.concatenate([Wp.reshape(O, -1), Wn.reshape(O, -1)], axis=1)
        st = self._stack
        if kind == "epsilon":
            pos_terms, signed_terms = [(W4, "mulx", None)], None
        elif kind == "zplus":
            pos_terms = [(Wp, "mulx", None)]
            signed_terms = [(Wp, "mulpos", None), (Wn, "mulneg", None)]
        elif kind in ("alphabeta", "gamma"):
            if kind == "alphabeta":
                U, D = Wp, Wn
            else:
                U, D = W4 + self.gamma * Wp, W4 + self.gamma * Wn
            pos_terms = [(st(U, D), "mulx", None)]
            if self.abs_form:  # against g's sum and difference planes (rule_g's sumdiff)
                half = 0.5 * self.gamma
                signed_terms = [((1.0 + half) * W4, "mulx", None), (half * np.abs(W4), "mulabs", None)]
            else:
                signed_terms = [(st(U, D), "mulpos", None), (st(D, U), "mulneg", None)]
        elif kind == "zbox":
            lo, hi = (b.reshape((self.rows,) + self.row_shape)[0] for b in zbox_bounds(node, rule, self.in_shape))
            pos_terms = signed_terms = [(Wp, "mulxoff", lo), (Wn, "mulxoff", hi)]
            self.zc = self._const_fwd(lo, Wp, None) + self._const_fwd(hi, Wn, None)
        elif kind == "flat":
            # 1^T g = (sum over a group's outputs of g) scattered through ones: the
            # backward GEMM gets one output channel per group instead of O/G
            ones = np.ones((self.G, self.Cg) + tuple(self.kernel))
            pos_terms = signed_terms = [(ones, "none", None)]
            self.zc = self._const_fwd(np.ones(self.row_shape), np.ones_like(W4), None)
        else:  # wsquare
            W2 = W4 * W4
            pos_terms = signed_terms = [(W2, "none", None)]
            bb = None if (self.b is None or self.zero_bias) else np.asarray(node.params["bias"], np.float64) ** 2
            self.zc = self._const_fwd(np.ones(self.row_shape), W2, bb)
        if self.zc is not None:
            self.zc = _f32(self.zc.reshape(O, -1))
        self.pos_terms = pos_terms
        if signed_terms is None:  # the sign of x does not matter
            signed_terms = pos_terms
        self.signed_terms = signed_terms if (signed_terms is pos_terms or not nonneg) else None

    def operands(self, matrix, term) -> tuple:
        """The plan's operands laid out by a backend: ``matrix(A2d)`` for each forward matrix
        (None stays None), ``term(Wst, epi, off)`` for each backward term. Returns
        ``(fwd_pos, fwd, pos, posneg, absw, bwd_pos, bwd_signed)``; ``bwd_signed is bwd_pos``
        when the sign of x does not matter, None when the input is known non-negative."""
        fwd = [None if A is None else matrix(A) for A in (self.fwd_pos, self.fwd, self.pos, self.posneg, self.absw)]
        bwd_pos = [term(*t) for t in self.pos_terms]
        if self.signed_terms is self.pos_terms:
            bwd_signed = bwd_pos
        else:
            bwd_signed = None if self.signed_terms is None else [term(*t) for t in self.signed_terms]
        return (*fwd, bwd_pos, bwd_signed)

    @staticmethod
    def supported(graph, node, rule) -> bool:
        """Whether the kernels run this node: ZBox on a dense layer over several positions
        needs the same bounds at every position (the constant sums are per row)."""
        if node.op != "dense" or rule.kind != "zbox":
            return True
        in_shape = tuple(graph[node.inputs[0]].shape)
        try:
            lo, hi = zbox_bounds(node, rule, in_shape)
        except Exception:  # noqa: BLE001 - the plan reports bad bounds with the node's name
            return True
        rows = lo.reshape(-1, in_shape[-1]), hi.reshape(-1, in_shape[-1])
        return all(bool(np.all(r == r[:1])) for r in rows)

    @property
    def halves(self) -> int:
        """Rows of g per output channel: AlphaBeta and Gamma stack two factors."""
        return 2 if self.kind in ("alphabeta", "gamma") else 1

    def _stack(self, U, D):
        """[U; D] stacked per group along the output axis: (G * 2 Og, Cg, KH, KW)."""
        G, Og = self.G, self.Og
        s = U.shape[1:]
        return np.concatenate([U.reshape(G, Og, *s), D.reshape(G, Og, *s)], axis=1).reshape(G * 2 * Og, *s)

    def _const_fwd(self, x1, W4mod, b):
        """A model-constant forward sum over one sample (float64, once per Explainer)."""
        Wm = W4mod.reshape(self.node.params["weight"].shape)
        if self.node.op == "dense":
            z = np.asarray(x1, np.float64).reshape(1, -1) @ Wm.T
            return z if b is None else z + b
        return conv_forward(np.asarray(x1, np.float64)[None], Wm, b, self.node.attrs)[0]
