"""The CPU backend's dense layers against a float64 oracle written from docs/design.md.

The oracle below follows docs/design.md section 2 literally (explicit W+, W-, x+, x-
arrays, float64). It runs on the same float32-rounded inputs as the backend, so
only the backend's own arithmetic is measured.

Tolerance: |R_in - oracle| <= RTOL * max|oracle| per sample, RTOL = 1e-4. The
backend sums z and W^T g in float32 (GEMM core) over `in` / `out` terms; with
these inputs (magnitudes bounded away from zero, no cancelling z) the error is
about u * sqrt(terms) * (sum|terms| / max|R_in|) with u = 6e-8, far below 1e-4,
while a wrong term is O(1) relative.
"""

from __future__ import annotations

import numpy as np
import pytest

_ext = pytest.importorskip("fastlrp._ext")
core = _ext.core
if core is None:  # pragma: no cover
    pytest.skip(f"fastlrp._core not built: {_ext.core_error}", allow_module_level=True)

from fastlrp import rules  # noqa: E402
from fastlrp.backends.base import BackendError  # noqa: E402
from fastlrp.graph import GraphBuilder  # noqa: E402

RTOL = 1e-4

# (N, in, out): ones, primes, 17/33/100, an in-block edge (257 > 256) and a
# batch larger than the kernel's sample tile (8).
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 7), (4, 33, 13), (5, 100, 33), (2, 13, 100), (9, 5, 17), (3, 257, 11)]


# ----------------------------------------------------------------------------- oracle
def _s(z, eps):
    return z + np.where(z >= 0, eps, -eps)


def _p(a):
    return np.maximum(a, 0.0)


def _n(a):
    return np.minimum(a, 0.0)


def oracle(kind, x, W, b, R, low=None, high=None, eps=1e-6, alpha=2.0, beta=1.0, gamma=0.25):
    """float64, formula by formula. b is None for 'no bias' / zero_bias."""
    x, W, R = (np.asarray(a, np.float64) for a in (x, W, R))
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64)
    xp, xn, Wp, Wn = _p(x), _n(x), _p(W), _n(W)
    if kind == "epsilon":
        return x * ((R / _s(x @ W.T + b, eps)) @ W)
    if kind == "zplus":
        g = R / _s(xp @ Wp.T + xn @ Wn.T + _p(b), eps)
        return xp * (g @ Wp) + xn * (g @ Wn)
    if kind == "alphabeta":
        ga = R / _s(xp @ Wp.T + xn @ Wn.T + _p(b), eps)
        gb = R / _s(xp @ Wn.T + xn @ Wp.T + _n(b), eps)
        return alpha * (xp * (ga @ Wp) + xn * (ga @ Wn)) - beta * (xp * (gb @ Wn) + xn * (gb @ Wp))
    if kind == "gamma":
        Wu, Wd = W + gamma * Wp, W + gamma * Wn
        bu, bd = b + gamma * _p(b), b + gamma * _n(b)
        z = x @ W.T + b
        gp = (z > 0) * R / _s(xp @ Wu.T + xn @ Wd.T + bu, eps)
        gn = (z < 0) * R / _s(xp @ Wd.T + xn @ Wu.T + bd, eps)
        return xp * (gp @ Wu) + xn * (gp @ Wd) + xp * (gn @ Wd) + xn * (gn @ Wu)
    if kind == "zbox":
        l = np.broadcast_to(np.asarray(low, np.float64), x.shape)
        h = np.broadcast_to(np.asarray(high, np.float64), x.shape)
        g = R / _s(x @ W.T - l @ Wp.T - h @ Wn.T, eps)
        return x * (g @ W) - l * (g @ Wp) - h * (g @ Wn)
    if kind == "flat":
        ones = np.ones_like(W)
        return (R / _s(np.ones_like(x) @ ones.T, eps)) @ ones
    if kind == "wsquare":
        W2 = W * W
        return (R / _s(np.ones_like(x) @ W2.T + b * b, eps)) @ W2
    raise ValueError(kind)


# ------------------------------------------------------------------------------ data
def _signed(rng, shape, lo=0.05, hi=1.0):
    """Both signs, magnitudes in [lo, hi]: never zero."""
    return (rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def _data(shape, seed):
    N, I, O = shape
    rng = np.random.default_rng(seed)
    x = _signed(rng, (N, I), 0.05, 2.0)
    W = _signed(rng, (O, I), 0.01, 1.0)
    b = _signed(rng, (O,), 0.01, 1.0)
    R = _signed(rng, (N, O), 0.1, 1.0)
    return x, W, b, R


def _check(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.all(np.isfinite(got))
    scale = np.max(np.abs(want), axis=1, keepdims=True)
    err = np.abs(got.astype(np.float64) - want)
    worst = float(np.max(err / np.maximum(scale, 1e-30)))
    assert np.all(err <= RTOL * scale), f"max relative error {worst:.3g} > {RTOL}"


# ------------------------------------------------------------------------ backend
def _dense_graph(W, b, in_shape=None):
    gb = GraphBuilder(in_shape or (W.shape[1],))
    gb.dense(gb.input, W, b, name="fc")
    return gb.build()


RULE_OBJECTS = [
    rules.Epsilon(),
    rules.Epsilon(epsilon=0.1, zero_bias=True),
    rules.ZPlus(),
    rules.AlphaBeta(2.0, 1.0),
    rules.AlphaBeta(1.0, 0.0, zero_bias=True),
    rules.Gamma(0.25),
    rules.ZBox(-2.0, 2.0),
    rules.Flat(),
    rules.WSquare(),
]


@pytest.mark.parametrize("shape", [(6, 17, 9)] + SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rule", RULE_OBJECTS, ids=str)
def test_cpu_backend_dense(rule, shape):
    from fastlrp.backends.cpu import CpuBackend

    x, W, b, R = _data(shape, seed=2)
    graph = _dense_graph(W.astype(np.float64), b.astype(np.float64))
    op = CpuBackend().prepare(graph, graph["fc"], rule)
    # float64 and non-contiguous inputs are converted (unambiguous), not rejected
    out, ctx = op.forward([np.asfortranarray(x.astype(np.float64))])
    np.testing.assert_allclose(out, x.astype(np.float64) @ W.T.astype(np.float64) + b, rtol=1e-5, atol=1e-5)
    (got,) = op.relevance(ctx, R.astype(np.float64))
    p = rule.params()
    zb = p.get("zero_bias", False)
    kw = {
        "eps": p.get("epsilon", p.get("stabilizer", 1e-6)),
        "alpha": p.get("alpha", 2.0),
        "beta": p.get("beta", 1.0),
        "gamma": p.get("gamma", 0.25),
    }
    if rule.kind == "zbox":
        kw.update(low=rule.low, high=rule.high)
    _check(got, oracle(rule.kind, x, W, None if zb else b, R, **kw))


def test_cpu_backend_zbox_bounds_broadcast_and_errors():
    from fastlrp.backends.cpu import CpuBackend

    x, W, _, R = _data((2, 6, 3), seed=4)
    graph = _dense_graph(W, None)
    low = np.linspace(-2, -1, 6)
    op = CpuBackend().prepare(graph, graph["fc"], rules.ZBox(low, 1.5))
    _, ctx = op.forward([x])
    (got,) = op.relevance(ctx, R)
    _check(got, oracle("zbox", x, W, None, R, low=low.astype(np.float32), high=np.float32(1.5)))
    with pytest.raises(BackendError, match="do not broadcast"):
        CpuBackend().prepare(graph, graph["fc"], rules.ZBox(np.zeros(4), 1.0))


def test_cpu_backend_input_shape_error_names_node():
    from fastlrp.backends.cpu import CpuBackend

    _, W, b, _ = _data((2, 6, 3), seed=4)
    graph = _dense_graph(W, b)
    op = CpuBackend().prepare(graph, graph["fc"], rules.Epsilon())
    with pytest.raises(BackendError, match="fc"):
        op.forward([np.ones((2, 5), np.float32)])


def test_cpu_backend_delegates_other_ops():
    from fastlrp.backends.cpu import CpuBackend

    gb = GraphBuilder((4,))
    h = gb.activation(gb.input, "relu")
    graph = gb.build()
    op = CpuBackend().prepare(graph, graph[h], rules.Pass())
    out, ctx = op.forward([np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 2.0, 0.0, 4.0]])
    (r,) = op.relevance(ctx, np.ones((1, 4), np.float32))
    assert r.dtype == np.float32


def _relevance(rule, x, W, b, R):
    from fastlrp.backends.cpu import CpuBackend

    graph = _dense_graph(W, b)
    op = CpuBackend().prepare(graph, graph["fc"], rule)
    _, ctx = op.forward([x])
    return op.relevance(ctx, R)[0]


def test_cpu_backend_epsilon_conserves_without_bias():
    x, W, _, _ = _data((4, 33, 13), seed=11)
    R = (x.astype(np.float64) @ W.T.astype(np.float64)).astype(np.float32)
    got = _relevance(rules.Epsilon(1e-6), x, W, None, R)
    np.testing.assert_allclose(got.sum(axis=1), R.sum(axis=1), rtol=1e-4, atol=1e-4)


def test_cpu_backend_stabilizer_sign_of_zero_is_positive():
    # z = 0 exactly: s(0) = +eps, so R_in = R / eps * (W^2 share) keeps R's sign.
    got = _relevance(rules.WSquare(0.5), np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32), None,
                     np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(got, np.zeros((1, 2), np.float32))
    got = _relevance(rules.Flat(0.0), np.ones((1, 3), np.float32), np.zeros((2, 3), np.float32), None,
                     np.ones((1, 2), np.float32))
    np.testing.assert_allclose(got, np.full((1, 3), 2.0 / 3.0), rtol=1e-6)
