"""Backends, tolerances, inputs and small networks shared by the backend tests
(the backend matrix test_backend_matrix.py, and the backend-specific
test_cpu_kernels.py, test_numba_backend.py, test_gpu_engine.py, test_attention.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext
from fastlrp.graph import GraphBuilder

#: fastlrp._cuda_emu (built only with FASTLRP_CUDA_EMU=ON), or None with the reason
cuda_emu, cuda_emu_missing = _ext.cuda_emu()

#: Relevance tolerances of the float32 backends against the float64 reference
#: (max|R - R_ref| <= RTOL * max|R_ref|), for single layers and whole networks.
RTOL_LAYER = 1e-4
RTOL_NET = 1e-4
#: Relevance that is only routed (Pass, winner-takes-all max pooling): copies and
#: sums of a few float32 values, exact up to the float32 rounding of those sums.
RTOL_ROUTE = 1e-6
#: Forward outputs of one layer against the reference (float32 sums of K terms).
RTOL_FORWARD = 1e-5

#: The GPU engine on the SIMT emulator (built with FASTLRP_CUDA_EMU=ON) and on a real GPU (marker gpu).
GPU_BACKENDS = [
    pytest.param("cuda-emu", marks=pytest.mark.skipif(cuda_emu is None, reason=cuda_emu_missing)),
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not _ext.cuda_available(),
                                                   reason=f"no usable GPU: {_ext.cuda_unavailable_reason()}")]),
]

#: Every float32 backend: numba (always there), the compiled CPU backend, the GPU engine.
BACKENDS = [
    "numba",
    pytest.param("cpu", marks=pytest.mark.skipif(_ext.core is None,
                                                 reason=f"fastlrp._core not built: {_ext.core_error}")),
] + GPU_BACKENDS


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def signed(rng, shape, lo=0.1, hi=1.0):
    """Random float32 values of both signs with magnitudes in [lo, hi]: never zero."""
    return (rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def gamma_signed_layer_cases(seed):
    """Gamma on signed inputs (LinearPlan's |W| form) on a strided conv with a bias, a dense
    layer without and one with a bias: yields (graph, node name, rule, x, R, float64
    reference relevance of the node) for Gamma(0.25) and Gamma(1.0, zero_bias=True)."""
    from fastlrp import rules

    rng = np.random.default_rng(seed)
    gb = GraphBuilder((3, 9, 9))
    h = gb.conv(gb.input, rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6), stride=2, padding=1,
                name="conv")
    h = gb.dense(gb.flatten(h), rng.standard_normal((7, 150)), None, name="fc")
    gb.dense(h, rng.standard_normal((5, 7)), rng.standard_normal(5), name="fc2")
    graph = gb.build()
    ref = fastlrp.get_backend("reference")
    for node, in_shape in (("conv", (3, 9, 9)), ("fc", (150,)), ("fc2", (7,))):
        for rule in (rules.Gamma(0.25), rules.Gamma(1.0, zero_bias=True)):
            x = signed(rng, (4,) + in_shape)
            rop = ref.prepare(graph, graph[node], rule)
            out, ctx = rop.forward([x.astype(np.float64)])
            R = signed(rng, out.shape)
            yield graph, node, rule, x, R, rop.relevance(ctx, R)[0]


def explain_vs_reference(backend, graph, composite, x, target=0):
    """(relevance from ``backend`` on float32 x, float64 reference relevance)."""
    ref = fastlrp.Explainer(graph, composite, backend="reference")
    ex = fastlrp.Explainer(graph, composite, backend=backend)
    got = ex.explain(x, target=target)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    return got, ref.explain(x.astype(np.float64), target=target)


# ----------------------------------------------------------------------------- small networks
def small_vgg(rng):
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


def small_resnet(rng):
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


def branchy_cnn(rng, pool="max"):
    """Grouped conv, residual add, max or ceil-mode average pool, a concatenated branch, adaptive pool."""
    gb = GraphBuilder((3, 13, 11))
    h = gb.conv(gb.input, signed(rng, (8, 3, 3, 3)), signed(rng, 8) * 0.1, padding=1)
    h = gb.activation(h, "relu")
    skip = h
    h = gb.conv(h, signed(rng, (8, 2, 3, 3)) * 0.5, signed(rng, 8) * 0.1, padding=1, groups=4)
    h = gb.activation(h, "relu")
    h = gb.add(h, skip)
    h = gb.maxpool(h, 3, stride=2, padding=1) if pool == "max" else gb.avgpool(h, 2, ceil_mode=True)
    h2 = gb.activation(gb.conv(h, signed(rng, (5, 8, 1, 1)), None), "relu")
    h = gb.concat([h, h2], axis=0)
    h = gb.conv(h, signed(rng, (7, 13, 3, 3)) * 0.3, signed(rng, 7) * 0.1, stride=2)
    h = gb.activation(h, "relu")
    h = gb.flatten(gb.adaptive_avgpool(h, (2, 2)))
    h = gb.activation(gb.dense(h, signed(rng, (17, 28)) * 0.3, signed(rng, 17) * 0.1), "relu")
    gb.dense(h, signed(rng, (5, 17)), signed(rng, 5) * 0.1)
    return gb.build()


def cnn1d(rng):
    gb = GraphBuilder((2, 29))
    h = gb.activation(gb.conv(gb.input, signed(rng, (6, 2, 5)), signed(rng, 6) * 0.1, stride=2, padding=2), "relu")
    h = gb.maxpool(h, 3, stride=2, dims=1, ceil_mode=True)
    h = gb.activation(gb.conv(h, signed(rng, (4, 6, 3)), None, dilation=2), "relu")
    h = gb.avgpool(h, 2, dims=1, count_include_pad=False, padding=1)
    h = gb.flatten(h)
    n_in = int(np.prod(gb.build()[h].shape))
    gb.dense(h, signed(rng, (3, n_in)), signed(rng, 3) * 0.1)
    return gb.build()


def structure_net(rng):
    """Concat, unfolded batchnorm, residual add, permute, non-ReLU activations."""
    gb = GraphBuilder((3, 6, 6))
    a = gb.activation(gb.conv(gb.input, rng.standard_normal((4, 3, 3, 3)) / 5, None, padding=1), "relu")
    b = gb.activation(gb.conv(gb.input, rng.standard_normal((2, 3, 1, 1)) / 2, None), "tanh")
    h = gb.concat([a, b], axis=0)
    h = gb.batchnorm(h, rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.1, 6))
    h2 = gb.activation(gb.conv(h, rng.standard_normal((6, 6, 3, 3)) / 8, None, padding=1), "leaky_relu",
                       negative_slope=0.1)
    h = gb.add(h, h2)
    h = gb.permute(h, (1, 2, 0))
    h = gb.flatten(h)
    gb.dense(h, rng.standard_normal((3, 216)) / 15, None)
    return gb.build()


def attention_block(rng, T=5, D=6, H=2, bias=True, activation="gelu_tanh"):
    """One pre-norm attention block with a residual, an activation and a dense head: tokens (T, D)."""
    d = D // H
    gb = GraphBuilder((T, D))
    h = gb.add_node("layernorm", gb.input, {"axes": (-1,), "eps": 1e-5},
                    {"weight": rng.standard_normal((1, D)), "bias": rng.standard_normal((1, D)) if bias else None})
    heads = []
    for t in "qkv":
        p = gb.dense(h, rng.standard_normal((D, D)), rng.standard_normal(D) if bias else None, name=f"{t}_proj")
        heads.append(gb.permute(gb.reshape(p, (T, H, d)), (1, 0, 2)))
    s = gb.add_node("matmul", heads[:2], {"transpose_b": True}, name="scores")
    s = gb.add_node("mul", [s, gb.add_node("const", [], params={"value": np.array(d ** -0.5)})])
    a = gb.add_node("softmax", s, {"axis": -1}, name="softmax")
    o = gb.add_node("matmul", [a, heads[2]], name="values")
    o = gb.reshape(gb.permute(o, (1, 0, 2)), (T, D))
    o = gb.dense(o, rng.standard_normal((D, D)), rng.standard_normal(D) if bias else None, name="out_proj")
    o = gb.add(o, gb.input, name="residual")
    o = gb.reshape(gb.activation(o, activation), (T * D,))
    gb.dense(o, rng.standard_normal((3, T * D)), None, name="head")
    return gb.build()
