"""The compiled CPU backend's own parts: the GEMM core, conv_gemm's arguments, the
ISA paths, thread counts, input conversion and errors of its prepared ops. (Its
ops, rules and whole networks against the float64 reference: test_backend_matrix.py.)

Tolerances (float32 compute, float32 accumulation):
- GEMM vs numpy float64: |C - C64| <= 1e-5 * max(|A| |B|) elementwise bound; the
  float32 sum of K products errs by about u * sqrt(K) * sum|a b| with u = 6e-8.
- Relevance vs the reference: tests/_nets.py (RTOL_LAYER, RTOL_NET).
- 1 vs 2 threads: bit-identical, by construction (every output element is
  summed by one thread in a fixed K order by the same micro-kernel).
"""

from __future__ import annotations

import numpy as np
import pytest

_ext = pytest.importorskip("fastlrp._ext")
core = _ext.core
if core is None or not hasattr(core, "conv_gemm"):  # pragma: no cover
    pytest.skip(f"fastlrp._core (with the GEMM core) not built: {_ext.core_error}", allow_module_level=True)

import fastlrp  # noqa: E402
from fastlrp import rules  # noqa: E402
from fastlrp.backends.base import BackendError, Float32Op  # noqa: E402
from fastlrp.backends.cpu import CpuBackend  # noqa: E402
from fastlrp.graph import GraphBuilder  # noqa: E402
from _nets import (  # noqa: E402,I001
    RTOL_LAYER, RTOL_NET, attention_block, gamma_signed_layer_cases, rel_err, signed, small_resnet, small_vgg,
)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    core.set_num_threads(0)
    core.set_isa(-1)


# ----------------------------------------------------------------------------- GEMM
GEMM_SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (3, 4, 1), (7, 13, 5), (6, 16, 384), (17, 33, 389),
               (100, 3, 1000), (1, 100, 7), (61, 97, 777), (13, 1031, 37)]


def _isas():
    return [name for name in core.gemm_info()["supported"]]


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_gemm_against_numpy(isa, m, n, k):
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    want = A.astype(np.float64) @ B
    bound = np.abs(A).astype(np.float64) @ np.abs(B)
    core.set_num_threads(1)
    C1 = core.gemm(A, B)
    core.set_num_threads(2)
    C2 = core.gemm(A, B)
    assert C1.shape == (m, n) and C1.dtype == np.float32
    assert np.all(np.abs(C1 - want) <= 1e-5 * bound.max())
    np.testing.assert_array_equal(C1, C2)


def test_conv_gemm_sign_split_and_epilogues():
    """[x+ ; x-] packing along K, bias and multiply-by-x epilogues, against numpy."""
    rng = np.random.default_rng(1)
    N, C, L, O = 3, 5, 37, 7
    x = rng.standard_normal((N, C, 1, L)).astype(np.float32)
    Wp, Wn = rng.standard_normal((O, C)), rng.standard_normal((O, C))
    A = core.pack_weights(np.concatenate([Wp, Wn], 1).astype(np.float32), 1)
    y = core.conv_gemm(x, A, (1, 1), (1, 1), (0, 0), (1, 1), (1, L), 1, 0, None, None, None)
    x64 = x.astype(np.float64)[:, :, 0, :]
    want = np.einsum("oc,ncl->nol", Wp, np.maximum(x64, 0)) + np.einsum("oc,ncl->nol", Wn, np.minimum(x64, 0))
    assert rel_err(y[:, :, 0, :], want) < 1e-5
    b = rng.standard_normal(O).astype(np.float32)
    A1 = core.pack_weights(Wp.astype(np.float32), 1)
    m = rng.standard_normal((N, O, 1, L)).astype(np.float32)
    z = np.einsum("oc,ncl->nol", Wp, x64)
    for epi, f in [(1, lambda v: v + b[None, :, None]), (2, lambda v: v * m[:, :, 0]),
                   (3, lambda v: v * np.maximum(m[:, :, 0], 0)), (4, lambda v: v * np.minimum(m[:, :, 0], 0))]:
        y = core.conv_gemm(x, A1, (1, 1), (1, 1), (0, 0), (1, 1), (1, L), 0, epi,
                           b if epi == 1 else None, m if epi >= 2 else None, None)
        assert rel_err(y[:, :, 0, :], f(z)) < 1e-5, epi


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("shape,kernel,stride,pad,rows", [((5, 1, 1), (1, 1), (1, 1), (0, 0), False),
                                                          ((5, 1, 1), (1, 1), (1, 1), (0, 0), True),
                                                          ((4, 6, 7), (3, 3), (1, 1), (1, 1), False),
                                                          ((3, 7, 5), (3, 2), (2, 1), (1, 0), False)])
def test_conv_gemm_abs_packing_and_mulabs_epilogue(isa, shape, kernel, stride, pad, rows):
    """sign 2 packs |x| (Gamma's |W| |x| on signed inputs); the mulabs epilogue multiplies by |mul|."""
    rng = np.random.default_rng(21)
    C, H, Wd = shape
    N, O = 37, 9
    x = signed(rng, (N, C, H, Wd)).astype(np.float32)
    W = rng.standard_normal((O, C) + kernel)
    at = {"dims": 2, "stride": stride, "padding": tuple((p, p) for p in pad), "dilation": (1, 1), "groups": 1}
    from fastlrp.backends.reference import conv_forward

    want = conv_forward(np.abs(x.astype(np.float64)), W, None, at)
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    A = core.pack_weights(W.reshape(O, -1).astype(np.float32), 1, rows=rows)
    y = core.conv_gemm(x, A, kernel, stride, pad, (1, 1), want.shape[2:], 2, 0, None, None, None)
    assert rel_err(y, want) < 1e-5
    m = signed(rng, want.shape).astype(np.float32)
    epi = dict(core.epilogues)["mulabs"]
    y = core.conv_gemm(x, A, kernel, stride, pad, (1, 1), want.shape[2:], 2, epi, None, m, None)
    assert rel_err(y, want * np.abs(m)) < 1e-5
    with pytest.raises(ValueError, match="sign"):
        core.conv_gemm(x, A, kernel, stride, pad, (1, 1), want.shape[2:], 3, 0, None, None, None)


def test_rule_g_sum_and_difference_planes():
    """rule_g's sumdiff: the two halves of AlphaBeta / Gamma as (g0 + g1, g0 - g1) planes,
    bit for bit the sum and difference of the stacked layout's halves."""
    rng = np.random.default_rng(22)
    kinds = dict(core.rule_kinds)
    for kind, O, P, G in [("gamma", 12, 1, 1), ("gamma", 12, 10, 3), ("alphabeta", 8, 6, 2)]:
        R, out, ps = (signed(rng, (5, O, P)).astype(np.float32) for _ in range(3))
        b = rng.standard_normal(O).astype(np.float32)
        args = (kinds[kind], R, out, ps, b, None, G, 1e-6, 2.0, 1.0, 0.25, False, False)
        g = core.rule_g(*args).reshape(5, G, 2, O // G, P)
        g0, g1 = g[:, :, 0].reshape(5, O, P), g[:, :, 1].reshape(5, O, P)
        sd = core.rule_g(*args, True)
        assert sd.shape == (2, 5, O, P)
        np.testing.assert_array_equal(sd[0], g0 + g1)
        np.testing.assert_array_equal(sd[1], g0 - g1)
    with pytest.raises(ValueError, match="sumdiff"):
        core.rule_g(kinds["epsilon"], R, out, None, None, None, 1, 1e-6, sumdiff=True)


def test_gamma_on_signed_inputs_runs_on_w_and_abs_w():
    """Gamma on a signed input: the plan's |W| form (no [W+ | W-] operands packed), equal to
    the float64 reference and conserving with a zero bias, on dense and strided conv layers."""
    for graph, node, rule, x, R, want in gamma_signed_layer_cases(23):
        op = CpuBackend().prepare(graph, graph[node], rule)
        assert op.plan.abs_form and op.A_posneg is None and op.A_abs is not None
        _, ctx = op.forward([x])
        (got,) = op.relevance(ctx, R)
        assert rel_err(got, want) < RTOL_LAYER, (node, rule)
        if rule.zero_bias or graph[node].params.get("bias") is None:
            assert abs(got.sum() - R.sum()) < 1e-4 * np.abs(R).sum(), (node, rule)


def test_conv_gemm_split_output():
    """A = [W ; W+] in one GEMM: rows < split get the bias epilogue, the rest go raw
    to a second array (the forward pass and ZPlus' psum from one packing)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    W = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5).astype(np.float32)
    A = core.pack_weights(np.concatenate([W, np.maximum(W, 0)]).reshape(10, -1).astype(np.float32), 1)
    y, p = core.conv_gemm(x, A, (3, 3), (1, 1), (1, 1), (1, 1), (6, 7), 0, 1, b, None, None, 5)
    from fastlrp.backends.reference import conv_forward

    at = {"dims": 2, "stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}
    assert rel_err(y, conv_forward(x.astype(np.float64), W, b, at)) < 1e-5
    assert rel_err(p, conv_forward(x.astype(np.float64), np.maximum(W, 0), None, at)) < 1e-5
    with pytest.raises(ValueError, match="split"):
        core.conv_gemm(x, A, (3, 3), (1, 1), (1, 1), (1, 1), (6, 7), 0, 0, None, None, None, 10)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("S,C,O,groups,sign", [(1, 5, 3, 1, 0), (37, 300, 29, 1, 0), (70, 33, 13, 1, 1),
                                                (45, 600, 40, 1, 1), (33, 18, 12, 3, 0), (65, 24, 30, 3, 1),
                                                (300, 700, 100, 1, 1), (13, 1, 1, 1, 0)])
def test_conv_gemm_feature_rows(isa, rows, S, C, O, groups, sign):
    """S images of 1x1 (a dense layer's rows, the tokens of a transformer), with sign split,
    every epilogue and a split output, against float64.  Weights packed as usual: B packed
    by transposing x's rows, tiles written as rows of features (gemm_impl.h rows_layout /
    sink_features); packed with rows=True (groups 1): the sample-rows driver, tiles of
    samples x features with the weights as B (rows_gemm_impl); more than 144 samples
    (AVX-512's block of samples) and K past one block take several of each."""
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    rng = np.random.default_rng(S + C + O)
    x = signed(rng, (S, C, 1, 1)).astype(np.float32)
    halves, Cg = 1 + sign, C // groups
    W = rng.standard_normal((O, halves * Cg)).astype(np.float32)
    x64, W64 = x.astype(np.float64)[:, :, 0, 0], W.astype(np.float64)
    parts = [np.maximum(x64, 0), np.minimum(x64, 0)] if sign else [x64]
    Og = O // groups
    z = np.zeros((S, O))
    for g in range(groups):
        for h, xs in enumerate(parts):
            z[:, g * Og:(g + 1) * Og] += xs[:, g * Cg:(g + 1) * Cg] @ W64[g * Og:(g + 1) * Og, h * Cg:(h + 1) * Cg].T
    A = core.pack_weights(W, groups, rows=rows)
    assert A.rows == (rows and groups == 1)
    b = rng.standard_normal(O).astype(np.float32)
    m = signed(rng, (S, O, 1, 1)).astype(np.float32)
    off = rng.standard_normal((O, 1)).astype(np.float32)
    m2 = m[:, :, 0, 0].astype(np.float64)
    cases = [(0, None, z), (1, None, z + b), (2, None, z * m2), (3, None, z * np.maximum(m2, 0)),
             (4, None, z * np.minimum(m2, 0)), (5, off, z * (m2 - off[:, 0]))]
    for epi, o, want in cases:
        y = core.conv_gemm(x, A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), sign, epi,
                           b if epi == 1 else None, m if epi >= 2 else None, o)
        assert y.shape == (S, O, 1, 1) and rel_err(y[:, :, 0, 0], want) < 1e-5, (isa, epi)
    if groups == 1 and O > 1:
        split = O // 2 + 1
        y, y2 = core.conv_gemm(x, A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), sign, 1, b[:split], None, None, split)
        assert rel_err(y[:, :, 0, 0], (z + b)[:, :split]) < 1e-5 and rel_err(y2[:, :, 0, 0], z[:, split:]) < 1e-5


@pytest.mark.parametrize("isa", _isas())
def test_sample_rows_driver_one_row_and_errors(isa):
    """Weights packed for sample rows: a sample's row is bit for bit the same alone (a
    panel of one real row runs ukr_row) and inside a batch (the full micro-kernel), with
    the sign split and the epilogue; images other than 1x1 are refused with the reason."""
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    rng = np.random.default_rng(12)
    W = rng.standard_normal((45, 2 * 300)).astype(np.float32)
    A = core.pack_weights(W, 1, rows=True)
    assert A.rows
    b = rng.standard_normal(45).astype(np.float32)
    wide = signed(rng, (157, 300, 1, 1)).astype(np.float32)
    full = core.conv_gemm(wide, A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), 1, 1, b, None, None)
    for s in (0, 13, 156):  # (156: the one real row of the last panel where MR is 12, 6)
        one = core.conv_gemm(wide[s:s + 1], A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), 1, 1, b, None, None)
        np.testing.assert_array_equal(one, full[s:s + 1])
    x64 = wide[:, :, 0, 0].astype(np.float64)
    want = np.maximum(x64, 0) @ W[:, :300].T.astype(np.float64) + np.minimum(x64, 0) @ W[:, 300:].T + b
    assert rel_err(full[:, :, 0, 0], want) < 1e-5
    with pytest.raises(ValueError, match="sample rows"):
        core.conv_gemm(signed(rng, (2, 600, 3, 3)).astype(np.float32), A, (1, 1), (1, 1), (0, 0), (1, 1), (3, 3))


def _fused_quotient_case(core_pack, zero_bias, seed=13):
    """conv_gemm with the fused Epsilon quotient (qz, qb) against rule_g's g and the plain
    product: bit for bit, with the mulx epilogue of a dense layer's relevance pass."""
    rng = np.random.default_rng(seed)
    S, O, C = 157, 45, 300
    W = rng.standard_normal((C, O)).astype(np.float32)  # the backward weights (in x out)
    A = core_pack(W)
    R = signed(rng, (S, O, 1, 1)).astype(np.float32)
    out = signed(rng, (S, O, 1, 1)).astype(np.float32)
    out[0, :3] = 0.0  # s(0) = +eps
    b = rng.standard_normal(O).astype(np.float32)
    x = signed(rng, (S, C, 1, 1)).astype(np.float32)
    code = dict(core.rule_kinds)["epsilon"]
    g = core.rule_g(code, R, out, None, b, None, 1, 1e-3, 1.0, 0.0, 0.0, zero_bias, False)
    args = ((1, 1), (1, 1), (0, 0), (1, 1), (1, 1), 0, core.epilogues["mulx"], None, x, None)
    want = core.conv_gemm(g.reshape(R.shape), A, *args)
    got = core.conv_gemm(R, A, *args, 0, out, b if zero_bias else None, 1e-3)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="sample rows"):
        core.conv_gemm(R, core.pack_weights(W, 1), *args, 0, out, None, 1e-3)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("zero_bias", [False, True])
def test_fused_epsilon_quotient(isa, zero_bias):
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    _fused_quotient_case(lambda W: core.pack_weights(W, 1, rows=True), zero_bias)


@pytest.mark.parametrize("isa", _isas())
def test_one_column_panels_equal_the_micro_kernel(isa):
    """A micro-panel with one real column (batch 1 of a dense layer; the last column of a
    conv's output) runs a one-column loop: bit for bit what the full micro-kernel gives the
    same column inside a wider batch, with the epilogue and the sign split, and near float64."""
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    rng = np.random.default_rng(11)
    W = rng.standard_normal((29, 2 * 300)).astype(np.float32)
    A = core.pack_weights(W, 1)
    b = rng.standard_normal(29).astype(np.float32)
    wide = signed(rng, (41, 300, 1, 1)).astype(np.float32)
    for S in (1, 33):  # 33 = one full panel of 32 and one of a single column (AVX-512, AVX2 NR = 32, 16)
        one = core.conv_gemm(wide[:S], A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), 1, 1, b, None, None)
        full = core.conv_gemm(wide, A, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), 1, 1, b, None, None)[:S]
        np.testing.assert_array_equal(one, full)
        x64 = wide[:S, :, 0, 0].astype(np.float64)
        want = np.maximum(x64, 0) @ W[:, :300].T.astype(np.float64) + np.minimum(x64, 0) @ W[:, 300:].T + b
        assert rel_err(one[:, :, 0, 0], want) < 1e-5
    # a conv with 7 x 7 outputs of one image: 49 columns, a last panel of one column where NR is 16 or 8
    x = signed(rng, (1, 3, 9, 9)).astype(np.float32)
    Wc = rng.standard_normal((5, 27)).astype(np.float32)
    y = core.conv_gemm(x, core.pack_weights(Wc, 1), (3, 3), (1, 1), (0, 0), (1, 1), (7, 7))
    from fastlrp.backends.reference import conv_forward

    at = {"dims": 2, "stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1}
    assert rel_err(y, conv_forward(x.astype(np.float64), Wc.reshape(5, 3, 3, 3).astype(np.float64), None, at)) < 1e-5


def _grouped_conv64(x, W, groups, stride, pad, dil, out_hw, sign):
    """float64 conv GEMM of conv_gemm's definition: W (O, halves * Cg * KH * KW) per group."""
    N, C, H, Wd = x.shape
    O, K = W.shape
    Cg, halves = C // groups, 2 if sign else 1
    KH = KW = int(round(np.sqrt(K // (halves * Cg))))
    x64 = x.astype(np.float64)
    parts = [np.maximum(x64, 0), np.minimum(x64, 0)] if sign else [x64]
    y = np.zeros((N, O) + tuple(out_hw))
    for g in range(groups):
        for i in range(O // groups):
            o = g * (O // groups) + i
            w = W[o].astype(np.float64).reshape(halves, Cg, KH, KW)
            for h, xs in enumerate(parts):
                for ci in range(Cg):
                    for kh in range(KH):
                        for kw in range(KW):
                            for oh in range(out_hw[0]):
                                ih = oh * stride - pad + kh * dil
                                if not 0 <= ih < H:
                                    continue
                                for ow in range(out_hw[1]):
                                    iw = ow * stride - pad + kw * dil
                                    if 0 <= iw < Wd:
                                        y[:, o, oh, ow] += w[h, ci, kh, kw] * xs[:, g * Cg + ci, ih, iw]
    return y


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("C,mult,cg,k,stride,pad,dil,sign,epi", [
    (6, 1, 1, 3, 1, 1, 1, 0, "bias"), (5, 2, 1, 3, 2, 1, 1, 1, "none"), (4, 1, 2, 3, 1, 2, 2, 0, "mulx"),
    (3, 1, 1, 5, 2, 0, 1, 1, "mulxoff"), (4, 3, 1, 1, 1, 0, 1, 0, "mulpos"), (6, 1, 3, 3, 3, 1, 1, 1, "mulneg")])
def test_grouped_conv_gemm_direct_path(isa, C, mult, cg, k, stride, pad, dil, sign, epi):
    """Grouped GEMMs with few rows per group (depthwise convs and their backward
    products) run as direct loops (PackedA keeps A row-major): against float64, every
    epilogue and the sign split, odd sizes, every ISA this CPU runs."""
    assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
    rng = np.random.default_rng(C * 100 + k)
    G = C // cg
    N, H, Wd = 2, 11, 9
    x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
    O = G * mult
    W = rng.standard_normal((O, (2 if sign else 1) * cg * k * k)).astype(np.float32)
    out_hw = tuple((n + 2 * pad - dil * (k - 1) - 1) // stride + 1 for n in (H, Wd))
    b = rng.standard_normal(O).astype(np.float32)
    m = rng.standard_normal((N, O) + out_hw).astype(np.float32)
    off = rng.standard_normal((O,) + out_hw).astype(np.float32)
    E = core.epilogues
    y = core.conv_gemm(x, core.pack_weights(W, G), (k, k), (stride, stride), (pad, pad), (dil, dil), out_hw, sign,
                       E[epi], b if epi == "bias" else None, m if epi.startswith("mul") else None,
                       off if epi == "mulxoff" else None)
    z = _grouped_conv64(x, W, G, stride, pad, dil, out_hw, sign)
    m64 = m.astype(np.float64)
    want = {"none": z, "bias": z + b[None, :, None, None], "mulx": z * m64, "mulpos": z * np.maximum(m64, 0),
            "mulneg": z * np.minimum(m64, 0), "mulxoff": z * (m64 - off[None])}[epi]
    assert y.shape == want.shape and rel_err(y, want) < 1e-5


def test_conv_gemm_rejects_bad_arguments():
    A = core.pack_weights(np.ones((4, 6), np.float32), 1)
    x = np.ones((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="K = 6"):
        core.conv_gemm(x, A, (3, 3), (1, 1), (0, 0), (1, 1), (3, 3))
    with pytest.raises(TypeError, match="float32"):
        core.conv_gemm(x.astype(np.float64), A, (1, 2), (1, 1), (0, 0), (1, 1), (5, 4))
    with pytest.raises(ValueError, match="epilogue"):
        core.conv_gemm(x[:, :3], A, (1, 2), (1, 1), (0, 0), (1, 1), (5, 4), 0, 2)


# ----------------------------------------------------------------------------- prepared ops
def _dense_graph(W, b=None):
    gb = GraphBuilder((W.shape[1],))
    gb.dense(gb.input, W, b, name="fc")
    return gb.build()


@pytest.mark.parametrize("rule", [rules.Epsilon(), rules.AlphaBeta(2.0, 1.0), rules.ZBox(-2.0, 2.0), rules.Flat()],
                         ids=str)
def test_prepared_dense_converts_float64_and_noncontiguous_input(rule):
    """float64 and Fortran-ordered arrays are converted (unambiguous), not rejected."""
    rng = np.random.default_rng(2)
    W, b = rng.standard_normal((9, 17)), rng.standard_normal(9)
    x, R = signed(rng, (6, 17)).astype(np.float64), signed(rng, (6, 9)).astype(np.float64)
    graph = _dense_graph(W, b)
    op = CpuBackend().prepare(graph, graph["fc"], rule)
    out, ctx = op.forward([np.asfortranarray(x)])
    np.testing.assert_allclose(out, x @ W.T + b, rtol=1e-5, atol=1e-5)
    (got,) = op.relevance(ctx, R)
    assert got.dtype == np.float32
    ref = fastlrp.get_backend("reference").prepare(graph, graph["fc"], rule)
    (want,) = ref.relevance(ref.forward([x])[1], R)
    assert rel_err(got, want) < RTOL_LAYER


def test_zbox_bounds_that_do_not_broadcast():
    graph = _dense_graph(np.ones((3, 6)))
    with pytest.raises(BackendError, match="do not broadcast"):
        CpuBackend().prepare(graph, graph["fc"], rules.ZBox(np.zeros(4), 1.0))


def test_input_shape_error_names_node():
    graph = _dense_graph(np.ones((3, 6)), np.ones(3))
    op = CpuBackend().prepare(graph, graph["fc"], rules.Epsilon())
    with pytest.raises(BackendError, match="fc"):
        op.forward([np.ones((2, 5), np.float32)])


def test_ops_without_a_kernel_run_the_fallback_in_float32():
    gb = GraphBuilder((4,))
    h = gb.activation(gb.input, "relu")
    graph = gb.build()
    op = CpuBackend().prepare(graph, graph[h], rules.Pass())
    out, ctx = op.forward([np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 2.0, 0.0, 4.0]])
    (r,) = op.relevance(ctx, np.ones((1, 4), np.float32))
    assert r.dtype == np.float32


# ----------------------------------------------------------------------------- pools and structure


@pytest.mark.parametrize("net", [small_vgg, small_resnet], ids=["vgg", "resnet"])
def test_threads_1_and_2_identical(net):
    rng = np.random.default_rng(2)
    graph = net(rng)
    x = rng.standard_normal((5,) + graph.input_shape).astype(np.float32)
    outs = []
    for t in (1, 2):
        core.set_num_threads(t)
        for comp in ("epsilon_plus_flat", "epsilon_gamma_box(low=-3, high=3)"):
            outs.append(fastlrp.Explainer(graph, comp, backend="cpu").explain(x))
    for a, b in zip(outs[:2], outs[2:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", [rules.Epsilon(), rules.AlphaBeta(2, 1), rules.Gamma(0.25), rules.ZBox(-3, 3)], ids=str)
def test_threads_1_and_2_identical_large_layer(rule):
    """Layers big enough that the GEMM, rule epilogue, col2im and pools really fork
    (small ones run on one thread), strided and not."""
    rng = np.random.default_rng(8)
    gb = GraphBuilder((16, 24, 24))
    h = gb.conv(gb.input, rng.standard_normal((32, 16, 3, 3)) / 12, rng.standard_normal(32), padding=1)
    h = gb.maxpool(gb.activation(h, "relu"), 2)
    h = gb.conv(h, rng.standard_normal((24, 32, 3, 3)) / 17, None, stride=2, padding=1)
    gb.flatten(h)
    graph = gb.build()
    x = rng.standard_normal((6, 16, 24, 24)).astype(np.float32)
    comp = fastlrp.Composite({"linear": rule})
    res = []
    for t in (1, 2):
        core.set_num_threads(t)
        res.append(fastlrp.Explainer(graph, comp, backend="cpu").explain(x, target=5))
    np.testing.assert_array_equal(res[0], res[1])
    want = fastlrp.Explainer(graph, comp, backend="reference").explain(x.astype(np.float64), target=5)
    assert rel_err(res[1], want) < RTOL_NET


@pytest.mark.parametrize("composite", ["attnlrp(gamma=0.25)", "cp_lrp(epsilon=1e-9)"])
def test_threads_1_and_2_identical_attention_block(composite):
    """A transformer block big enough that the elementwise kernels (LayerNorm, softmax,
    GELU, the residual add, the matmul quotient) fork; they run compiled, not the fallback.
    (Against the reference: 4.7e-5 and 1.6e-5 measured, the numba backend's fallback
    1.1e-4 and 2.6e-5: this random block's float32 conditioning, not the kernels.)"""
    rng = np.random.default_rng(9)
    graph = attention_block(rng, T=67, D=96, H=3, activation="gelu")
    be, chosen = CpuBackend(), fastlrp.composites.get_composite(composite).resolve(graph)
    for node in graph.nodes:
        if node.op in ("layernorm", "softmax", "add", "activation"):
            assert not isinstance(be.prepare(graph, node, chosen[node.name]), Float32Op), node.describe()
    x = rng.standard_normal((6,) + graph.input_shape).astype(np.float32)
    res = []
    for t in (1, 2):
        core.set_num_threads(t)
        res.append(fastlrp.Explainer(graph, composite, backend="cpu").explain(x))
    np.testing.assert_array_equal(res[0], res[1])
    want = fastlrp.Explainer(graph, composite, backend="reference").explain(x.astype(np.float64))
    assert rel_err(res[1], want) < RTOL_NET


def test_activation_and_softmax_kernels_on_every_isa():
    """GELU (erf, tanh), SiLU and the softmax run at the GEMM's ISA; built without FMA
    contraction, every ISA computes the same activation bits (over [-12, 12], odd length, a
    chunk edge, 2 threads), and softmax rows that differ by their sum's rounding only."""
    x = np.linspace(-12.0, 12.0, 3 * (1 << 14) + 7).astype(np.float32)
    rows = (np.random.default_rng(3).standard_normal((301, 197)) * 8).astype(np.float32)
    core.set_num_threads(2)
    outs = {}
    for isa in _isas():
        assert core.set_isa({"generic": 0, "avx2": 1, "avx512": 2}[isa])
        outs[isa] = [core.activation(code, x) for code in range(len(core.activation_kinds))]
        outs[isa].append(core.softmax_forward(rows))
    first = outs[_isas()[0]]
    for got in outs.values():
        for y, want in zip(got[:-1], first[:-1]):
            np.testing.assert_array_equal(y, want)
        np.testing.assert_allclose(got[-1], first[-1], rtol=1e-6, atol=0)


@pytest.mark.skipif(len(_isas()) < 2, reason="only one micro-kernel runs on this CPU")
def test_portable_kernel_matches_simd_kernel():
    rng = np.random.default_rng(4)
    graph = small_resnet(rng)
    x = rng.standard_normal((3,) + graph.input_shape).astype(np.float32)
    res = []
    for isa in (0, -1):
        core.set_isa(isa)  # weights are packed for the ISA active at prepare time
        res.append(fastlrp.Explainer(graph, "epsilon_alpha2_beta1_flat", backend="cpu").explain(x))
    assert rel_err(res[0], res[1].astype(np.float64)) < 1e-4
