"""The float64 reference backend against an independent formulation (layers as
dense matrices, rules by definition), the hand-checked AlphaBeta case,
conservation on whole networks, and per-channel average pooling."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder
from fastlrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus

from _oracle import conv_matrix, rule_on_matrix

# float64 throughout; the two formulations differ only in summation order
RTOL = 1e-9


def _rules():
    return [
        ("epsilon", Epsilon(1e-3), {"epsilon": 1e-3}),
        ("epsilon", Epsilon(1e-3, zero_bias=True), {"epsilon": 1e-3, "zero_bias": True}),
        ("zplus", ZPlus(), {"stabilizer": 1e-6}),
        ("zplus", ZPlus(zero_bias=True), {"stabilizer": 1e-6, "zero_bias": True}),
        ("alphabeta", AlphaBeta(2, 1), {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}),
        ("alphabeta", AlphaBeta(1, 0), {"alpha": 1.0, "beta": 0.0, "stabilizer": 1e-6}),
        ("alphabeta", AlphaBeta(2, 1, zero_bias=True), {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6, "zero_bias": True}),
        ("gamma", Gamma(0.25), {"gamma": 0.25, "stabilizer": 1e-6}),
        ("gamma", Gamma(1.0, zero_bias=True), {"gamma": 1.0, "stabilizer": 1e-6, "zero_bias": True}),
        ("zbox", ZBox(-2.0, 2.5), {"low": -2.0, "high": 2.5, "stabilizer": 1e-6}),
        ("flat", Flat(), {"stabilizer": 1e-6}),
        ("wsquare", WSquare(), {"stabilizer": 1e-6}),
    ]


RULES = _rules()
RULE_IDS = [f"{r[1]}" for r in RULES]


def _explain_single_layer(g, rule, x, R):
    ex = fastlrp.Explainer(g, fastlrp.Composite({"linear": rule}), backend="reference")
    return ex.explain(x, target=R)


def _nonzero(rng, shape):
    """Random values of both signs, bounded away from zero."""
    v = rng.uniform(0.1, 1.0, size=shape)
    return v * rng.choice([-1.0, 1.0], size=shape)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kind,rule,params", RULES, ids=RULE_IDS)
def test_dense_rules_match_definition(kind, rule, params, with_bias):
    rng = np.random.default_rng(1)
    n_in, n_out, N = 7, 5, 4
    W = _nonzero(rng, (n_out, n_in))
    b = _nonzero(rng, n_out) if with_bias else None
    x = _nonzero(rng, (N, n_in))
    R = _nonzero(rng, (N, n_out))
    bld = GraphBuilder((n_in,))
    bld.dense(bld.input, W, b)
    got = _explain_single_layer(bld.build(), rule, x, R)
    p = dict(params)
    if kind == "zbox":
        p["low"], p["high"] = np.full_like(x, p["low"]), np.full_like(x, p["high"])
    want = rule_on_matrix(kind, W, np.ones_like(W), b, x, R, **p)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


CONV_CASES = [
    # (in_shape, weight shape, stride, padding pairs, dilation, groups)
    ((3, 7, 6), (4, 3, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 9, 8), (6, 2, 3, 2), (2, 1), ((0, 1), (2, 0)), (1, 2), 2),
    ((2, 8, 8), (2, 1, 3, 3), (2, 3), ((1, 1), (0, 0)), (2, 1), 2),
    ((3, 11), (5, 3, 4), (2,), ((1, 2),), (1,), 1),
    ((4, 10), (4, 1, 3), (1,), ((2, 2),), (3,), 4),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kind,rule,params", RULES, ids=RULE_IDS)
def test_conv_rules_match_definition(kind, rule, params, with_bias, case):
    in_shape, wshape, stride, padding, dilation, groups = CONV_CASES[case]
    rng = np.random.default_rng(100 + case)
    W = _nonzero(rng, wshape)
    b = _nonzero(rng, wshape[0]) if with_bias else None
    N = 2
    x = _nonzero(rng, (N, *in_shape))
    M, mask, out_shape = conv_matrix(W, in_shape, stride, padding, dilation, groups)
    R = _nonzero(rng, (N, *out_shape))
    bld = GraphBuilder(in_shape)
    bld.conv(bld.input, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = bld.build()
    assert g.output_shape == out_shape
    got = _explain_single_layer(g, rule, x, R)
    bias = None if b is None else np.repeat(b, int(np.prod(out_shape[1:])))
    p = dict(params)
    if kind == "zbox":
        p["low"], p["high"] = np.full((N, M.shape[1]), p["low"]), np.full((N, M.shape[1]), p["high"])
    want = rule_on_matrix(kind, M, mask, bias, x.reshape(N, -1), R.reshape(N, -1), **p).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())
    # the forward pass is the same linear map
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    z = x.reshape(N, -1) @ M.T + (0 if bias is None else bias)
    np.testing.assert_allclose(ex.forward(x).reshape(N, -1), z, rtol=1e-12, atol=1e-12)


def test_zbox_per_channel_bounds():
    rng = np.random.default_rng(5)
    W = _nonzero(rng, (3, 2, 3, 3))
    x = _nonzero(rng, (2, 2, 5, 5))
    low = np.array([-1.0, -2.0]).reshape(2, 1, 1)
    high = np.array([1.5, 0.5]).reshape(2, 1, 1)
    bld = GraphBuilder((2, 5, 5))
    bld.conv(bld.input, W, None, padding=1)
    g = bld.build()
    M, mask, out_shape = conv_matrix(W, (2, 5, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    R = _nonzero(rng, (2, *out_shape))
    got = _explain_single_layer(g, ZBox(low, high), x, R)
    lo = np.broadcast_to(low, (2, 5, 5)).reshape(1, -1).repeat(2, 0)
    hi = np.broadcast_to(high, (2, 5, 5)).reshape(1, -1).repeat(2, 0)
    want = rule_on_matrix("zbox", M, mask, None, x.reshape(2, -1), R.reshape(2, -1), low=lo, high=hi, stabilizer=1e-6)
    np.testing.assert_allclose(got.reshape(2, -1), want, rtol=RTOL, atol=1e-12)


# ---------------------------------------------------------------------------------
# the hand-checked case from docs/design.md section 2.5: W = (1, -1), b = -1, x = (1, 1), R = z = -1
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,beta,want", [(1, 0, (-1.0, 0.0)), (2, 1, (-2.0, 0.5))])
def test_alphabeta_hand_checked(alpha, beta, want):
    bld = GraphBuilder((2,))
    bld.dense(bld.input, np.array([[1.0, -1.0]]), np.array([-1.0]))
    ex = fastlrp.Explainer(bld.build(), fastlrp.Composite({"dense": AlphaBeta(alpha, beta)}), backend="reference")
    x = np.array([1.0, 1.0])
    assert ex.forward(x)[0] == -1.0
    # the seed is the explained output itself, z = -1
    got = ex.explain(x, target=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------
# conservation on whole networks (zero biases)
# ---------------------------------------------------------------------------------
def _cnn(rng, with_bias=False, pool="avg"):
    bld = GraphBuilder((3, 12, 12))
    b = (lambda n: _nonzero(rng, n)) if with_bias else (lambda n: None)
    h = bld.conv(bld.input, rng.normal(size=(6, 3, 3, 3)), b(6), padding=1, name="conv1")
    h = bld.activation(h, "relu")
    skip = h
    h = bld.conv(h, rng.normal(size=(6, 6, 3, 3)) * 0.5, b(6), padding=1, name="conv2")
    h = bld.activation(h, "relu")
    h = bld.add(h, skip, name="residual")
    h = bld.avgpool(h, 2) if pool == "avg" else bld.maxpool(h, 2)
    h2 = bld.conv(h, rng.normal(size=(4, 6, 1, 1)), b(4), name="branch")
    h2 = bld.activation(h2, "relu")
    h = bld.concat([h, h2], axis=0)
    h = bld.adaptive_avgpool(h, (3, 3))
    h = bld.flatten(h)
    h = bld.dense(h, rng.normal(size=(16, 90)) * 0.3, b(16), name="fc1")
    h = bld.activation(h, "relu")
    bld.dense(h, rng.normal(size=(5, 16)), b(5), name="fc2")
    return bld.build()


CONSERVING = {
    "epsilon": fastlrp.Composite({"linear": Epsilon(1e-9)}),
    "zplus": fastlrp.Composite({"linear": ZPlus(1e-9)}),
    "alphabeta": fastlrp.Composite({"linear": AlphaBeta(2, 1, 1e-9)}),
    # Flat and WSquare spread relevance onto inputs that may be zero (after a ReLU),
    # where a Norm layer above could not pass it on: they are first-layer rules
    "flat_first": fastlrp.Composite({"linear": ZPlus(1e-9)}, first=Flat(1e-9)),
    "wsquare_first": fastlrp.Composite({"linear": ZPlus(1e-9)}, first=WSquare(1e-9)),
    "zbox_first": fastlrp.Composite({"linear": Epsilon(1e-9)}, first=ZBox(-4.0, 4.0, 1e-9)),
    "epsilon_plus_flat": fastlrp.composites.EpsilonPlusFlat(epsilon=1e-9, stabilizer=1e-9),
    "epsilon_alpha2_beta1": fastlrp.composites.EpsilonAlpha2Beta1(epsilon=1e-9, stabilizer=1e-9),
}


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("name", sorted(CONSERVING))
def test_conservation_whole_network(name, pool):
    rng = np.random.default_rng(7)
    g = _cnn(rng, with_bias=False, pool=pool)
    ex = fastlrp.Explainer(g, CONSERVING[name], backend="reference")
    x = rng.normal(size=(3, 3, 12, 12))
    out = ex.forward(x)
    R, report = ex.explain(x, target=None, return_layers=True)
    explained = out[np.arange(3), out.argmax(axis=1)]
    np.testing.assert_allclose(R.reshape(3, -1).sum(axis=1), explained, rtol=1e-5)
    np.testing.assert_allclose(report.explained, explained, rtol=1e-12)
    # every node passes on what it receives
    for n in report.names:
        np.testing.assert_allclose(report.relevance_in[n], report.relevance_out[n], rtol=1e-5, atol=1e-9)


def test_report_shows_bias_absorption():
    rng = np.random.default_rng(8)
    g = _cnn(rng, with_bias=True)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    x = rng.normal(size=(2, 3, 12, 12))
    R, rep = ex.explain(x, return_layers=True)
    total_absorbed = sum(rep.absorbed(n) for n in rep.names)
    np.testing.assert_allclose(rep.explained - total_absorbed, R.reshape(2, -1).sum(axis=1), rtol=1e-9)
    assert np.abs(rep.absorbed("fc2")).max() > 0  # biases absorb relevance
    assert "fc2" in str(rep)


# ---------------------------------------------------------------------------------
# average pooling never moves relevance across channels
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pool",
    [
        {"op": "avgpool", "kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
        {"op": "avgpool", "kernel": 2, "stride": 1, "padding": 1, "ceil_mode": False, "count_include_pad": True},
        {"op": "adaptive", "output_size": (3, 2)},
        {"op": "adaptive", "output_size": (1, 1)},
    ],
)
@pytest.mark.parametrize("rule", [Norm(), Flat()])
def test_avgpool_keeps_channels(pool, rule):
    rng = np.random.default_rng(3)
    bld = GraphBuilder((4, 7, 6))
    p = dict(pool)
    if p.pop("op") == "avgpool":
        bld.avgpool(bld.input, **p)
    else:
        bld.adaptive_avgpool(bld.input, p["output_size"])
    g = bld.build()
    ex = fastlrp.Explainer(g, fastlrp.Composite({"avgpool": rule}), backend="reference")
    x = rng.uniform(0.1, 1.0, size=(2, 4, 7, 6))
    seed = np.zeros((2, *g.output_shape))
    seed[:, 2] = rng.uniform(0.5, 1.0, size=seed[:, 2].shape)
    R = ex.explain(x, target=seed)
    assert np.all(R[:, [0, 1, 3]] == 0)
    assert np.all(np.abs(R[:, 2]).sum(axis=(1, 2)) > 0)
    np.testing.assert_allclose(R[:, 2].sum(axis=(1, 2)), seed[:, 2].sum(axis=(1, 2)), rtol=1e-5)


# ---------------------------------------------------------------------------------
# the opt-in proportional max pooling (Norm rule on a max pool)
# ---------------------------------------------------------------------------------
def _proportional_maxpool_by_loops(x, R, kernel, stride, pad, dil, eps):
    N, C, H, W = x.shape
    out = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(R.shape[2]):
                for j in range(R.shape[3]):
                    taps = [
                        (i * stride[0] - pad[0] + a * dil[0], j * stride[1] - pad[1] + b * dil[1])
                        for a in range(kernel[0])
                        for b in range(kernel[1])
                    ]
                    taps = [(h, w) for h, w in taps if 0 <= h < H and 0 <= w < W]
                    z = sum(x[n, c, h, w] for h, w in taps)
                    z = z + (eps if z >= 0 else -eps)
                    for h, w in taps:
                        out[n, c, h, w] += x[n, c, h, w] * R[n, c, i, j] / z
    return out


@pytest.mark.parametrize("backend", ["reference", "numba", "cpu"])
@pytest.mark.parametrize("cfg", [((2, 2), (2, 2), 0, 1, False), ((3, 3), (2, 1), 1, 1, True), ((2, 3), (1, 2), 1, (2, 1), False)])
def test_proportional_maxpool(cfg, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    if backend == "cpu":
        from fastlrp import _ext

        if _ext.core is None:
            pytest.skip("compiled extension not built")
    kernel, stride, pad, dil, ceil = cfg
    rng = np.random.default_rng(11)
    bld = GraphBuilder((3, 7, 8))
    bld.maxpool(bld.input, kernel, stride=stride, padding=pad, dilation=dil, ceil_mode=ceil)
    g = bld.build()
    x = rng.uniform(0.1, 1.0, size=(2, 3, 7, 8)).astype(np.float32).astype(np.float64)
    R = rng.uniform(0.1, 1.0, size=(2, *g.output_shape))
    ex = fastlrp.Explainer(g, fastlrp.Composite({"maxpool": Norm(1e-9)}), backend=backend)
    got = ex.explain(x, target=R)
    dil2 = (dil, dil) if isinstance(dil, int) else dil
    want = _proportional_maxpool_by_loops(x, R, kernel, stride, (pad, pad), dil2, 1e-9)
    tol = 1e-12 if backend == "reference" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    # positive inputs: the window shares conserve relevance
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), R.sum(axis=(1, 2, 3)), rtol=1e-5)
