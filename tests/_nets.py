"""Layers, pools, small networks and comparison helpers shared by the kernel tests
(test_kernels_vs_reference.py, test_cpu_kernels.py, test_gpu_engine.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext, rules
from fastlrp.graph import GraphBuilder

try:
    from fastlrp import _cuda_emu
except ImportError:  # pragma: no cover - built by default
    _cuda_emu = None

#: Relevance tolerances of the float32 backends against the float64 reference
#: (max|R - R_ref| <= RTOL * max|R_ref|), for single layers and whole networks.
RTOL_LAYER = 5e-4
RTOL_NET = 2e-3

#: The GPU engine on the SIMT emulator (always built) and on a real GPU (marker gpu).
GPU_BACKENDS = [
    pytest.param("cuda-emu", marks=pytest.mark.skipif(_cuda_emu is None, reason="fastlrp._cuda_emu not built")),
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not _ext.cuda_available(),
                                                   reason=f"no usable GPU: {_ext.cuda_unavailable_reason()}")]),
]


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def explain_vs_reference(backend, graph, composite, x, target=0):
    """(relevance from ``backend`` on float32 x, float64 reference relevance)."""
    ref = fastlrp.Explainer(graph, composite, backend="reference")
    ex = fastlrp.Explainer(graph, composite, backend=backend)
    got = ex.explain(x, target=target)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    return got, ref.explain(x.astype(np.float64), target=target)

RULES = [
    rules.Epsilon(),
    rules.Epsilon(epsilon=0.1, zero_bias=True),
    rules.ZPlus(),
    rules.AlphaBeta(2.0, 1.0),
    rules.AlphaBeta(1.0, 0.0),
    rules.Gamma(0.25),
    rules.Gamma(0.5, zero_bias=True),
    rules.ZBox(-2.0, 2.5),
    rules.Flat(),
    rules.WSquare(),
]


def layer_graph(rng, in_shape, weight_shape, bias, relu_before, **conv_kw):
    gb = GraphBuilder(in_shape)
    h = gb.input
    if relu_before:
        h = gb.activation(h, "relu")
    W = rng.standard_normal(weight_shape)
    b = rng.standard_normal(weight_shape[0]) if bias else None
    h = gb.dense(h, W, b) if len(weight_shape) == 2 else gb.conv(h, W, b, **conv_kw)
    gb.flatten(h)
    return gb.build()


# (in_shape, weight_shape, stride, padding, dilation, groups, bias, relu_before)
CONV_CASES = [
    ((3, 7, 9), (5, 3, 3, 3), 1, 1, 1, 1, True, False),
    ((1, 1, 1), (1, 1, 1, 1), 1, 0, 1, 1, True, False),
    ((4, 8, 5), (6, 2, 3, 3), 2, ((1, 0), (0, 2)), 1, 2, False, False),
    ((6, 11, 13), (6, 2, 2, 3), (2, 1), ((1, 2), (0, 1)), (2, 1), 3, True, True),
    ((2, 5, 5), (4, 2, 1, 1), 1, 0, 1, 1, True, False),
    ((3, 9, 9), (17, 3, 3, 3), 3, 2, 2, 1, True, True),
    ((5, 1, 17), (7, 5, 1, 3), 1, ((0, 0), (2, 1)), 1, 1, False, False),
    ((4, 6, 6), (4, 1, 3, 3), 1, 1, 1, 4, True, True),  # depthwise
    ((3, 19, 23), (20, 3, 5, 4), (3, 2), ((2, 1), (1, 3)), (1, 2), 1, True, False),
    ((16, 4, 4), (33, 16, 3, 3), 1, 1, 1, 1, True, True),
]


CONV1D_CASES = [
    ((4, 19), (6, 2, 3), 2, ((2, 1),), 2, 2, True, False),
    ((3, 1), (2, 3, 1), 1, 0, 1, 1, False, False),
    ((5, 31), (7, 5, 4), 3, ((0, 3),), 1, 1, True, True),
    ((2, 13), (3, 2, 3), 1, 1, 3, 1, True, False),
]


def _pool_graph(rng, in_shape, pool):
    gb = GraphBuilder(in_shape)
    h = pool(gb, gb.input)
    h = gb.flatten(h)
    graph0 = gb.build()
    n_out = int(np.prod(graph0[h].shape))
    gb.dense(h, rng.standard_normal((3, n_out)), rng.standard_normal(3))
    return gb.build()


POOLS = [
    ("max2x2", (3, 8, 8), lambda gb, h: gb.maxpool(h, 2)),
    ("max3s2p1", (2, 9, 7), lambda gb, h: gb.maxpool(h, 3, 2, 1)),
    ("max_overlap_dil", (2, 11, 10), lambda gb, h: gb.maxpool(h, (3, 2), (1, 2), ((1, 1), (0, 1)), dilation=(2, 1))),
    ("max_ceil", (2, 7, 9), lambda gb, h: gb.maxpool(h, 3, 2, 1, ceil_mode=True)),
    ("max1d", (3, 17), lambda gb, h: gb.maxpool(h, 3, 2, 1, dims=1, ceil_mode=True)),
    ("avg2x2", (3, 8, 8), lambda gb, h: gb.avgpool(h, 2)),
    ("avg_pad_incl", (2, 7, 9), lambda gb, h: gb.avgpool(h, 3, 2, 1, ceil_mode=True, count_include_pad=True)),
    ("avg_pad_excl", (2, 7, 9), lambda gb, h: gb.avgpool(h, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("avg_divisor", (2, 6, 6), lambda gb, h: gb.avgpool(h, 3, 1, 1, divisor_override=5)),
    ("avg1d", (3, 17), lambda gb, h: gb.avgpool(h, 4, 3, 2, dims=1, count_include_pad=False)),
    ("adaptive", (2, 7, 10), lambda gb, h: gb.adaptive_avgpool(h, (3, 4))),
    ("global", (5, 4, 4), lambda gb, h: gb.adaptive_avgpool(h, 1)),
]


def _small_vgg(rng):
    gb = GraphBuilder((3, 12, 12))
    h = gb.input
    c = 3
    for co in (8, 8, "M", 16, "M"):
        if co == "M":
            h = gb.maxpool(h, 2)
            continue
        h = gb.conv(h, rng.standard_normal((co, c, 3, 3)) / np.sqrt(9 * c), 0.1 * rng.standard_normal(co), padding=1)
        h = gb.activation(h, "relu")
        c = co
    h = gb.flatten(h)
    h = gb.activation(gb.dense(h, rng.standard_normal((20, 16 * 9)) / 12, 0.1 * rng.standard_normal(20)), "relu")
    gb.dense(h, rng.standard_normal((5, 20)) / 4, 0.1 * rng.standard_normal(5))
    return gb.build()


def _small_resnet(rng):
    gb = GraphBuilder((3, 10, 10))
    h = gb.conv(gb.input, rng.standard_normal((8, 3, 3, 3)) / 5, 0.1 * rng.standard_normal(8), stride=2, padding=1)
    h = gb.activation(h, "relu")
    h = gb.maxpool(h, 3, 2, 1)
    idt = h
    b = gb.activation(gb.conv(h, rng.standard_normal((8, 8, 3, 3)) / 8, None, padding=1), "relu")
    b = gb.conv(b, rng.standard_normal((8, 8, 3, 3)) / 8, 0.1 * rng.standard_normal(8), padding=1)
    h = gb.activation(gb.add(b, idt), "relu")
    idt = gb.conv(h, rng.standard_normal((12, 8, 1, 1)) / 3, None, stride=2)
    b = gb.activation(gb.conv(h, rng.standard_normal((12, 8, 3, 3)) / 8, None, stride=2, padding=1), "relu")
    b = gb.conv(b, rng.standard_normal((12, 12, 3, 3)) / 10, None, padding=1)
    h = gb.activation(gb.add(b, idt), "relu")
    h = gb.flatten(gb.adaptive_avgpool(h, 1))
    gb.dense(h, rng.standard_normal((4, 12)) / 3, 0.1 * rng.standard_normal(4))
    return gb.build()


NET_COMPOSITES = ["epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box(low=-3, high=3)",
                  "excitation_backprop"]
