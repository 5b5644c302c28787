"""The Numba backend (float32) against the float64 reference backend.

Tolerance. Inputs, weights, biases and seeds are float32-representable, so both
backends see the same numbers and only float32 arithmetic differs. We require,
elementwise,

    |R_numba - R_ref| <= TOL * max |R_ref| + allowance,   TOL = 1e-4,

with allowance = 0 except where a rule divides by a signed sum that may nearly
cancel. For Epsilon and Gamma (z = Wx + b) the allowance is the first-order
effect of float32 rounding of z (:func:`_division_allowance`: a K-term float32
sum errs by at most K 2**-24 sum|terms|, and 1/z amplifies that by
sum|terms| / |z|); it is large only at outputs whose z nearly cancels, where no
float32 implementation can do better. For Norm over signed windows or summands
the bound is ``max(TOL, COND_TOL * cond)``, cond = max sum|terms| / |z|.
ZPlus, AlphaBeta, Flat, WSquare and ZBox (inputs inside the box) divide by sums
of same-signed terms and get TOL as is; max pooling routes exactly (1e-6).
Whole networks (fixed seeds) also meet TOL; measured errors there are ~1e-6.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastlrp
from fastlrp.backends import numba_backend as nb
from fastlrp.backends.base import BackendError
from fastlrp.backends.reference import conv_backward, conv_forward
from fastlrp.graph import GraphBuilder, conv_output_length
from fastlrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus

TOL = 1e-4
COND_TOL = 1e-6
NET_TOL = 1e-4


def _nonzero(rng, shape, lo=0.1, hi=1.0):
    """Random values of both signs, bounded away from zero, exactly float32."""
    v = rng.uniform(lo, hi, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return v.astype(np.float32).astype(np.float64)


def _run(graph, composite, x, target, backend):
    return fastlrp.Explainer(graph, composite, backend=backend).explain(x, target=target)


def _check(graph, composite, x, target, tol=TOL, allowance=0.0):
    """Compare the backends: |R_numba - R_ref| <= tol * max|R_ref| + allowance (elementwise)."""
    ref = _run(graph, composite, x, target, "reference")
    got = _run(graph, composite, x, target, "numba")
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = np.abs(ref).max()
    excess = np.abs(got - ref) - allowance
    err = excess.max()
    assert err <= tol * scale, f"max abs error beyond the allowance {err:.3g} > {tol:.3g} * max|R_ref| ({scale:.3g})"
    return got, ref


def _division_allowance(case, W, b, xin, R, gamma=0.0):
    """Elementwise first-order bound on what float32 rounding of z = W xin + b does to
    R_in for the rules dividing by z (Epsilon) or by zp, zn (Gamma, |zp|, |zn| >= |z|
    where they are used). A float32 sum of K terms errs by at most K 2**-24 S,
    S = |W| |xin| + |b|; g = R / z then errs by |R| K 2**-24 S / z^2 and the backward
    product spreads that as |xin| |W|^T (.), times (1 + gamma) per modified product."""
    in_shape, wshape, stride, padding, dilation, groups = case
    if len(wshape) == 2:
        fwd, bwd = (lambda v, M: v @ M.T), (lambda g, M: g @ M)
        bshape = (1, -1)
    else:
        attrs = {"dims": len(wshape) - 2, "stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        fwd = lambda v, M: conv_forward(v, M, None, attrs)  # noqa: E731
        bwd = lambda g, M: conv_backward(g, M, attrs, in_shape)  # noqa: E731
        bshape = (1, -1) + (1,) * (len(wshape) - 2)
    bias = 0.0 if b is None else b.reshape(bshape)
    z = fwd(xin, W) + bias
    S = fwd(np.abs(xin), np.abs(W)) + np.abs(bias)
    K = 2 * int(np.prod(wshape[1:])) + 1
    dg = np.abs(R) * K * 2.0**-24 * (1 + gamma) * S / np.maximum(z * z, 1e-30)
    return (1 + gamma) ** 2 * np.abs(xin) * bwd(dg, np.abs(W))


def _cond(z, s):
    """Condition number of dividing by z, whose terms have absolute sum s."""
    return float(np.max(np.abs(s) / np.maximum(np.abs(z), 1e-30)))


def _forward_ref(graph, x):
    return fastlrp.Explainer(graph, "epsilon_plus", backend="reference").forward(x)


def _seed(rng, graph, N):
    return _nonzero(rng, (N, *graph.output_shape))


# ---------------------------------------------------------------------------------
# dense and conv: every rule
# ---------------------------------------------------------------------------------
RULES = [
    Epsilon(1e-3),
    Epsilon(zero_bias=True),
    ZPlus(),
    ZPlus(zero_bias=True),
    AlphaBeta(2, 1),
    AlphaBeta(1, 0),
    AlphaBeta(3, 2, zero_bias=True),
    Gamma(0.25),
    Gamma(1.0, zero_bias=True),
    ZBox(-2.0, 2.5),
    Flat(),
    WSquare(),
    WSquare(zero_bias=True),
]

# (input shape, weight shape, stride, padding pairs, dilation, groups); weight shape of length 2: dense
LINEAR_CASES = [
    ((7,), (5, 7), None, None, None, 1),
    ((1,), (1, 1), None, None, None, 1),
    ((13,), (11, 13), None, None, None, 1),
    ((3, 7, 6), (4, 3, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 9, 8), (6, 2, 3, 2), (2, 1), ((0, 1), (2, 0)), (1, 2), 2),
    ((2, 8, 11), (2, 1, 3, 3), (2, 3), ((1, 1), (0, 0)), (2, 1), 2),
    ((1, 5, 5), (3, 1, 5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), 1),
    ((6, 5, 7), (9, 2, 1, 1), (1, 2), ((0, 0), (0, 0)), (1, 1), 3),
    ((3, 11), (5, 3, 4), (2,), ((1, 2),), (1,), 1),
    ((4, 10), (4, 1, 3), (1,), ((2, 2),), (3,), 4),
    ((1, 1), (3, 1, 1), (1,), ((0, 0),), (1,), 1),
]


def _layer_graph(case, W, b, relu):
    in_shape, wshape, stride, padding, dilation, groups = case
    bld = GraphBuilder(in_shape)
    h = bld.activation(bld.input, "relu") if relu else bld.input
    if len(wshape) == 2:
        bld.dense(h, W, b)
    else:
        bld.conv(h, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return bld.build()


@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", range(len(LINEAR_CASES)))
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_linear_rules(rule, case, with_bias, relu):
    rng = np.random.default_rng(1000 + 7 * case + 3 * with_bias + relu)
    in_shape, wshape = LINEAR_CASES[case][:2]
    W = _nonzero(rng, wshape)
    b = _nonzero(rng, wshape[0]) if with_bias else None
    g = _layer_graph(LINEAR_CASES[case], W, b, relu)
    N = 3
    x = _nonzero(rng, (N, *in_shape))
    R = _seed(rng, g, N)
    allowance = 0.0
    if rule.kind in ("epsilon", "gamma"):
        rb = None if b is None or rule.zero_bias else b
        xin = np.maximum(x, 0) if relu else x
        allowance = _division_allowance(LINEAR_CASES[case], W, rb, xin, R, getattr(rule, "gamma", 0.0))
    _check(g, fastlrp.Composite({"linear": rule}), x, R, TOL, allowance)


def test_nonnegative_input_skips_the_negative_half():
    rng = np.random.default_rng(2)
    bld = GraphBuilder((3, 6, 6))
    h = bld.conv(bld.input, _nonzero(rng, (4, 3, 3, 3)), name="c1")
    h = bld.activation(h, "relu")
    h = bld.maxpool(h, 2)
    h = bld.conv(h, _nonzero(rng, (4, 4, 1, 1)), name="c2")
    g = bld.build()
    assert not g.known_nonnegative("input") and g.known_nonnegative("maxpool_0")
    be = nb.NumbaBackend()
    signed = be.prepare(g, g["c1"], ZPlus())
    nonneg = be.prepare(g, g["c2"], AlphaBeta(2, 1))
    assert signed.split == 1 and signed.Wf.shape[2] == 2 * 3 * 9
    assert nonneg.split == 0 and nonneg.Wf.shape[2] == 4 and nonneg.WbT.shape[1] == 4


def test_chunked_batches_match(monkeypatch):
    """Batches split into several im2col chunks give the same result as one chunk."""
    monkeypatch.setattr(nb, "_CHUNK_FLOATS", 200)
    rng = np.random.default_rng(3)
    case = LINEAR_CASES[4]
    W, b = _nonzero(rng, case[1]), _nonzero(rng, case[1][0])
    g = _layer_graph(case, W, b, False)
    ex = fastlrp.Explainer(g, fastlrp.Composite({"linear": AlphaBeta(2, 1)}), backend="numba")
    assert ex._ops[g.output].chunk < 5
    x = _nonzero(rng, (5, *case[0]))
    R = _seed(rng, g, 5)
    _check(g, fastlrp.Composite({"linear": AlphaBeta(2, 1)}), x, R)
    np.testing.assert_allclose(ex.explain(x, target=R), _run(g, fastlrp.Composite({"linear": AlphaBeta(2, 1)}), x, R, "numba"),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha,beta,want", [(1, 0, (-1.0, 0.0)), (2, 1, (-2.0, 0.5))])
def test_alphabeta_hand_checked(alpha, beta, want):
    bld = GraphBuilder((2,))
    bld.dense(bld.input, np.array([[1.0, -1.0]]), np.array([-1.0]))
    ex = fastlrp.Explainer(bld.build(), fastlrp.Composite({"dense": AlphaBeta(alpha, beta)}), backend="numba")
    np.testing.assert_allclose(ex.explain(np.array([1.0, 1.0]), target=0), want, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    dims=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 3),
    og=st.integers(1, 3),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    n=st.integers(1, 3),
    rule_i=st.integers(0, 5),
    relu=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_conv_property(dims, groups, cg, og, k, stride, dil, pad, size, n, rule_i, relu, seed):
    rule = [Epsilon(), ZPlus(), AlphaBeta(2, 1), Gamma(0.5), Flat(), ZBox(-1.5, 1.5)][rule_i]
    sl = slice(2 - dims, 2)
    k, stride, dil, size = k[sl], stride[sl], dil[sl], size[sl]
    pads = ((pad[0], pad[1]), (pad[2], pad[3]))[sl]
    # grow the input until at least one output position exists
    size = tuple(max(s, dil[i] * (k[i] - 1) + 1 - pads[i][0] - pads[i][1]) for i, s in enumerate(size))
    assert all(conv_output_length(size[i], k[i], stride[i], pads[i], dil[i]) >= 1 for i in range(dims))
    rng = np.random.default_rng(seed)
    in_shape = (groups * cg, *size)
    W = _nonzero(rng, (groups * og, cg, *k))
    b = _nonzero(rng, groups * og)
    case = (in_shape, W.shape, stride, pads, dil, groups)
    g = _layer_graph(case, W, b, relu)
    x = _nonzero(rng, (n, *in_shape))
    R = _seed(rng, g, n)
    allowance = 0.0
    if rule.kind in ("epsilon", "gamma"):
        xin = np.maximum(x, 0) if relu else x
        allowance = _division_allowance(case, W, b, xin, R, getattr(rule, "gamma", 0.0))
    _check(g, fastlrp.Composite({"linear": rule}), x, R, TOL, allowance)


# ---------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------
MAXPOOL_CASES = [
    ((3, 7, 9), dict(kernel=2)),
    ((2, 9, 8), dict(kernel=3, stride=2, padding=1)),
    ((2, 8, 7), dict(kernel=3, stride=1, padding=1)),  # overlapping windows accumulate
    ((1, 11, 10), dict(kernel=(3, 2), stride=(2, 3), padding=((1, 0), (1, 1)), dilation=(2, 1), ceil_mode=True)),
    ((3, 10, 10), dict(kernel=3, stride=2, ceil_mode=True)),
    ((3, 13), dict(kernel=3, stride=2, padding=1, dims=1)),
    ((2, 12), dict(kernel=2, stride=3, dilation=2, ceil_mode=True, dims=1)),
    ((1, 1, 1), dict(kernel=1)),
]


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("case", range(len(MAXPOOL_CASES)))
def test_maxpool(case, ties):
    in_shape, kw = MAXPOOL_CASES[case]
    rng = np.random.default_rng(20 + case)
    bld = GraphBuilder(in_shape)
    bld.maxpool(bld.input, **kw)
    g = bld.build()
    # with ties (few distinct values), the first arg-max in window order must win
    x = rng.integers(-2, 2, size=(3, *in_shape)) + 0.5 if ties else _nonzero(rng, (3, *in_shape))
    np.testing.assert_array_equal(
        fastlrp.Explainer(g, "epsilon_plus", backend="numba").forward(x), _forward_ref(g, x).astype(np.float32)
    )
    _check(g, "epsilon_plus", x, _seed(rng, g, 3), 1e-6)


AVGPOOL_CASES = [
    ((3, 7, 6), dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ((2, 7, 6), dict(kernel=2, stride=1, padding=1, count_include_pad=True)),
    ((2, 9, 9), dict(kernel=(3, 2), stride=(2, 3), padding=((1, 1), (0, 1)), ceil_mode=True)),
    ((2, 8, 5), dict(kernel=3, stride=2, padding=1, divisor_override=5)),
    ((3, 11), dict(kernel=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False, dims=1)),
    ((2, 10), dict(kernel=3, stride=2, padding=1, divisor_override=2, dims=1)),
    ((3, 7, 6), dict(adaptive=(3, 4))),
    ((2, 5, 9), dict(adaptive=(1, 1))),
    ((2, 13), dict(adaptive=(5,))),
    ((2, 6, 6), dict(adaptive=(6, 6))),
]


@pytest.mark.parametrize("signed", [False, True], ids=["positive", "signed"])
@pytest.mark.parametrize("rule", [Norm(), Flat()], ids=str)
@pytest.mark.parametrize("case", range(len(AVGPOOL_CASES)))
def test_avgpool(case, rule, signed):
    in_shape, kw = AVGPOOL_CASES[case]
    kw = dict(kw)
    rng = np.random.default_rng(40 + case)
    bld = GraphBuilder(in_shape)
    if "adaptive" in kw:
        out = kw.pop("adaptive")
        bld.adaptive_avgpool(bld.input, out, dims=len(out))
    else:
        bld.avgpool(bld.input, **kw)
    g = bld.build()
    x = _nonzero(rng, (2, *in_shape)) if signed else np.abs(_nonzero(rng, (2, *in_shape)))
    tol = TOL
    if rule.kind == "norm" and signed:
        tol = max(TOL, COND_TOL * _cond(_forward_ref(g, x), _forward_ref(g, np.abs(x))))
    _check(g, fastlrp.Composite({"avgpool": rule}), x, _seed(rng, g, 2), tol)


# ---------------------------------------------------------------------------------
# structure and elementwise ops
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [Norm(), Pass()], ids=str)
def test_add(rule):
    rng = np.random.default_rng(5)
    bld = GraphBuilder((3, 5))
    a = bld.activation(bld.input, "tanh")
    c = bld.activation(bld.input, "elu", alpha=0.7)
    bld.add(a, c, bld.input)
    g = bld.build()
    x = _nonzero(rng, (4, 3, 5))
    comp = fastlrp.Composite({"add": rule})
    tol = TOL
    if rule.kind == "norm":
        acts = np.tanh(x), np.where(x > 0, x, 0.7 * np.expm1(np.minimum(x, 0))), x
        tol = max(TOL, COND_TOL * _cond(sum(acts), sum(np.abs(v) for v in acts)))
    _check(g, comp, x, _seed(rng, g, 4), tol)


@pytest.mark.parametrize(
    "kind,kw",
    [("relu", {}), ("leaky_relu", {"negative_slope": 0.1}), ("elu", {"alpha": 0.5}), ("tanh", {}), ("sigmoid", {}),
     ("gelu", {}), ("silu", {}), ("softplus", {}), ("identity", {}), ("softmax", {}), ("log_softmax", {})],
)
def test_activations_forward_and_routing(kind, kw):
    """Activations pass relevance on unchanged; their forward values feed the next layer."""
    rng = np.random.default_rng(6)
    bld = GraphBuilder((6,))
    h = bld.activation(bld.input, kind, **kw)
    bld.dense(h, _nonzero(rng, (4, 6)), _nonzero(rng, 4))
    g = bld.build()
    x = 2 * _nonzero(rng, (3, 6))
    ex = fastlrp.Explainer(g, fastlrp.Composite({"dense": ZPlus()}), backend="numba")
    np.testing.assert_allclose(ex.forward(x), _forward_ref(g, x), rtol=1e-5, atol=1e-5)
    _check(g, fastlrp.Composite({"dense": ZPlus()}), x, _seed(rng, g, 3))


def test_routing_ops():
    """reshape, permute, concat (channel and last axis) and batchnorm, with a conv after them."""
    rng = np.random.default_rng(7)
    bld = GraphBuilder((2, 3, 4))
    p = bld.permute(bld.input, (0, 2, 1))  # (2, 4, 3)
    r = bld.reshape(bld.input, (2, 4, 3))
    bn = bld.batchnorm(p, _nonzero(rng, 2), _nonzero(rng, 2))
    h = bld.concat([bn, r], axis=0)  # (4, 4, 3)
    h = bld.concat([h, bld.permute(h, (0, 1, 2))], axis=-1)  # (4, 4, 6)
    h = bld.conv(h, _nonzero(rng, (3, 4, 2, 2)), _nonzero(rng, 3), padding=1)  # (3, 5, 7)
    h = bld.flatten(h)
    bld.dense(h, _nonzero(rng, (5, 3 * 5 * 7)))
    g = bld.build()
    x = _nonzero(rng, (3, 2, 3, 4))
    _check(g, fastlrp.Composite({"linear": ZPlus()}), x, _seed(rng, g, 3))


# ---------------------------------------------------------------------------------
# whole networks
# ---------------------------------------------------------------------------------
def _cnn(rng, pool="max"):
    bld = GraphBuilder((3, 13, 11))
    h = bld.conv(bld.input, _nonzero(rng, (8, 3, 3, 3)), _nonzero(rng, 8) * 0.1, padding=1, name="conv1")
    h = bld.activation(h, "relu")
    skip = h
    h = bld.conv(h, _nonzero(rng, (8, 2, 3, 3)) * 0.5, _nonzero(rng, 8) * 0.1, padding=1, groups=4, name="conv2")
    h = bld.activation(h, "relu")
    h = bld.add(h, skip, name="residual")
    h = bld.maxpool(h, 3, stride=2, padding=1) if pool == "max" else bld.avgpool(h, 2, ceil_mode=True)
    h2 = bld.conv(h, _nonzero(rng, (5, 8, 1, 1)), None, name="branch")
    h2 = bld.activation(h2, "relu")
    h = bld.concat([h, h2], axis=0)
    h = bld.conv(h, _nonzero(rng, (7, 13, 3, 3)) * 0.3, _nonzero(rng, 7) * 0.1, stride=2, dilation=1, name="conv3")
    h = bld.activation(h, "relu")
    h = bld.adaptive_avgpool(h, (2, 2))
    h = bld.flatten(h)
    h = bld.dense(h, _nonzero(rng, (17, 28)) * 0.3, _nonzero(rng, 17) * 0.1, name="fc1")
    h = bld.activation(h, "relu")
    bld.dense(h, _nonzero(rng, (5, 17)), _nonzero(rng, 5) * 0.1, name="fc2")
    return bld.build()


def _cnn1d(rng):
    bld = GraphBuilder((2, 29))
    h = bld.conv(bld.input, _nonzero(rng, (6, 2, 5)), _nonzero(rng, 6) * 0.1, stride=2, padding=2)
    h = bld.activation(h, "relu")
    h = bld.maxpool(h, 3, stride=2, dims=1, ceil_mode=True)
    h = bld.conv(h, _nonzero(rng, (4, 6, 3)), None, dilation=2)
    h = bld.activation(h, "relu")
    h = bld.avgpool(h, 2, dims=1, count_include_pad=False, padding=1)
    h = bld.flatten(h)
    n = h
    g = bld.build()
    bld.dense(n, _nonzero(rng, (3, int(np.prod(g[n].shape)))), _nonzero(rng, 3) * 0.1)
    return bld.build()


COMPOSITES = ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box(low=-3, high=3)",
              "excitation_backprop", "epsilon_plus"]


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("net", ["cnn_max", "cnn_avg", "cnn1d"])
def test_networks(net, composite):
    rng = np.random.default_rng(11)
    g = _cnn1d(rng) if net == "cnn1d" else _cnn(rng, net[4:])
    x = _nonzero(rng, (4, *g.input_shape))
    _check(g, composite, x, None, NET_TOL)
    # several targets share one forward pass
    got, ref = _check(g, composite, x, "all", NET_TOL)
    assert got.shape == (4, g.output_shape[0], *g.input_shape)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(12)
    g = _cnn(rng, "max")
    x = _nonzero(rng, (5, *g.input_shape))
    before = numba.get_num_threads()
    results = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            results.append(_run(g, "epsilon_gamma_box(low=-3, high=3)", x, "all", "numba"))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6 * np.abs(results[0]).max())


def test_backend_name_and_errors():
    be = fastlrp.get_backend("numba")
    assert be.name == "numba" and be.dtype == np.float32
    bld = GraphBuilder((4,))
    bld.dense(bld.input, np.ones((2, 4)), name="fc")
    g = bld.build()
    with pytest.raises(BackendError, match="fc"):
        be.prepare(g, g["fc"], Norm())
    with pytest.raises(BackendError, match="fc"):
        be.prepare(g, g["fc"], ZBox(np.zeros(3), 1.0))
