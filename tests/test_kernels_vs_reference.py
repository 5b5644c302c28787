"""Every compiled backend against the float64 reference backend, layer by layer and
on whole networks: the CPU backend (fastlrp._core), the GPU engine on the SIMT
emulator (``cuda-emu``: the CUDA kernel source compiled for the host) and on a
real GPU (``cuda``; marked ``gpu``, skipped without one).

Tolerances (float32 compute): max|R - R_ref| <= RTOL * max|R_ref| per test, with
RTOL = 5e-4 for single layers and 2e-3 for whole networks. The forward sums z are
float32, so R / s(z) amplifies their rounding by sum|w x| / |z| (unbounded in
principle when z cancels; with these random layers the measured worst case is
~1e-5); every later layer adds its own. A wrong term (a missing x-, a wrong sign, a
padding tap) is O(1) relative, far above these bounds.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext, rules
from fastlrp.graph import GraphBuilder
from _nets import (
    CONV1D_CASES, CONV_CASES, GPU_BACKENDS, NET_COMPOSITES, POOLS, RTOL_LAYER, RTOL_NET, RULES, _pool_graph,
    _small_resnet, _small_vgg, explain_vs_reference, layer_graph, rel_err,
)

if _ext.core is None:  # pragma: no cover
    pytest.skip(f"fastlrp._core not built: {_ext.core_error}", allow_module_level=True)

BACKENDS = ["cpu"] + GPU_BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-g{c[5]}")
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_conv2d_rules(backend, case, rule):
    in_shape, wshape, stride, padding, dilation, groups, bias, relu = case
    rng = np.random.default_rng(abs(hash((in_shape, wshape))) % 2**32)
    graph = layer_graph(rng, in_shape, wshape, bias, relu, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    x = rng.standard_normal((3,) + in_shape).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
    assert got.dtype == np.float32
    assert rel_err(got, want) < RTOL_LAYER




@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}")
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_conv1d_rules(backend, case, rule):
    in_shape, wshape, stride, padding, dilation, groups, bias, relu = case
    rng = np.random.default_rng(7)
    graph = layer_graph(rng, in_shape, wshape, bias, relu, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    x = rng.standard_normal((2,) + in_shape).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (5, 17, 7), (3, 257, 11), (17, 100, 33), (2, 13, 1)])
@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_rules(backend, shape, rule, bias):
    N, I, O = shape
    rng = np.random.default_rng(N * 100 + I + O)
    graph = layer_graph(rng, (I,), (O, I), bias, False)
    x = rng.standard_normal((N, I)).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
def test_alphabeta_hand_checked_case(backend):
    """docs/design.md section 2.5: W = (1, -1), b = -1, x = (1, 1), R = z = -1."""
    gb = GraphBuilder((2,))
    gb.dense(gb.input, np.array([[1.0, -1.0]]), np.array([-1.0]))
    graph = gb.build()
    x = np.ones((1, 2), np.float32)
    for rule, want in [(rules.AlphaBeta(1, 0), [-1.0, 0.0]), (rules.AlphaBeta(2, 1), [-2.0, 0.5])]:
        R = fastlrp.Explainer(graph, fastlrp.Composite({"linear": rule}), backend=backend).explain(x, target=0)
        np.testing.assert_allclose(R[0], want, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonneg_input_skips_negative_half_and_matches(backend):
    """A ReLU producer (static) and an input that just happens to be >= 0 (run-time)
    both take the x >= 0 path; it must equal the reference."""
    rng = np.random.default_rng(3)
    for relu in (True, False):
        graph = layer_graph(rng, (3, 8, 8), (4, 3, 3, 3), True, relu, padding=1)
        x = np.abs(rng.standard_normal((2, 3, 8, 8))).astype(np.float32)
        for rule in (rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25)):
            got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
            assert rel_err(got, want) < RTOL_LAYER


# ----------------------------------------------------------------------------- pools and networks
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,in_shape,pool", POOLS, ids=[p[0] for p in POOLS])
@pytest.mark.parametrize("pool_rule", [None, rules.Flat()], ids=["norm", "flat"])
def test_pools(backend, name, in_shape, pool, pool_rule):
    rng = np.random.default_rng(5)
    graph = _pool_graph(rng, in_shape, pool)
    x = rng.standard_normal((3,) + in_shape).astype(np.float32)
    lm = {"linear": rules.Epsilon()}
    if pool_rule is not None:
        lm["avgpool"] = pool_rule
    comp = fastlrp.Composite(lm)
    got, want = explain_vs_reference(backend, graph, comp, x)
    assert rel_err(got, want) < RTOL_LAYER
    out = fastlrp.Explainer(graph, comp, backend=backend).forward(x)
    out_ref = fastlrp.Explainer(graph, comp, backend="reference").forward(x.astype(np.float64))
    assert rel_err(out, out_ref) < 1e-5




@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", [_small_vgg, _small_resnet], ids=["vgg", "resnet"])
@pytest.mark.parametrize("composite", NET_COMPOSITES)
def test_whole_networks(backend, net, composite):
    rng = np.random.default_rng(11)
    graph = net(rng)
    x = rng.standard_normal((4,) + graph.input_shape).astype(np.float32)
    try:
        ref = fastlrp.Explainer(graph, composite, backend="reference")
    except Exception as e:  # a composite this build does not know
        pytest.skip(f"composite {composite}: {e}")
    ex = fastlrp.Explainer(graph, composite, backend=backend)
    want = ref.explain(x.astype(np.float64))
    got = ex.explain(x)
    assert got.dtype == np.float32
    assert rel_err(got, want) < RTOL_NET
    if backend != "cpu":  # the same float32 arithmetic as the CPU backend, to the same bound
        cpu = fastlrp.Explainer(graph, composite, backend="cpu").explain(x)
        assert rel_err(got, cpu.astype(np.float64)) < RTOL_NET
    # several targets share the forward sums: same as one target at a time
    tg = np.tile(np.arange(3), (4, 1))
    many = ex.explain(x, target=tg)
    assert many.shape == (4, 3) + graph.input_shape
    for k in range(3):
        np.testing.assert_allclose(many[:, k], ex.explain(x, target=k), rtol=0, atol=1e-6 * np.abs(many).max())
