"""The GPU engine (fastlrp.backends.cuda) against the float64 reference and the CPU backend.

Every test runs twice: on ``cuda-emu`` (the same kernel source compiled for the
host SIMT emulator, fastlrp._cuda_emu: runs everywhere, CI included) and on
``cuda`` (a real GPU; marked ``gpu`` and skipped without one).  Tolerances as in
test_cpu_kernels.py (float32 sums): max|R - R_ref| <= 5e-4 max|R_ref| for single
layers and 2e-3 for whole networks.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext, rules
from fastlrp.backends.base import BackendError, DeviceOutOfMemory
from fastlrp.graph import GraphBuilder
from _nets import (
    CONV1D_CASES, CONV_CASES, NET_COMPOSITES, POOLS, RULES, _pool_graph, _small_resnet, _small_vgg, layer_graph,
)

try:
    from fastlrp import _cuda_emu
except ImportError:  # pragma: no cover - built by default
    _cuda_emu = None

RTOL_LAYER = 5e-4
RTOL_NET = 2e-3

BACKENDS = [
    pytest.param("cuda-emu", marks=pytest.mark.skipif(_cuda_emu is None, reason="fastlrp._cuda_emu not built")),
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not _ext.cuda_available(),
                                                   reason=f"no usable GPU: {_ext.cuda_unavailable_reason()}")]),
]


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def explain_vs_reference(backend, graph, composite, x, target=0):
    ref = fastlrp.Explainer(graph, composite, backend="reference")
    gpu = fastlrp.Explainer(graph, composite, backend=backend)
    got = gpu.explain(x, target=target)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    return got, ref.explain(x.astype(np.float64), target=target)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-g{c[5]}")
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_conv2d_rules(backend, case, rule):
    in_shape, wshape, stride, padding, dilation, groups, bias, relu = case
    rng = np.random.default_rng(abs(hash((in_shape, wshape, str(rule)))) % 2**32)
    graph = layer_graph(rng, in_shape, wshape, bias, relu, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    x = rng.standard_normal((3,) + in_shape).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}")
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_conv1d_rules(backend, case, rule):
    in_shape, wshape, stride, padding, dilation, groups, bias, relu = case
    rng = np.random.default_rng(17)
    graph = layer_graph(rng, in_shape, wshape, bias, relu, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    x = rng.standard_normal((2,) + in_shape).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (5, 17, 7), (3, 257, 11), (2, 13, 1)])
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
    """DESIGN.md: W = (1, -1), b = -1, x = (1, 1), R = z = -1."""
    gb = GraphBuilder((2,))
    gb.dense(gb.input, np.array([[1.0, -1.0]]), np.array([-1.0]))
    graph = gb.build()
    x = np.ones((1, 2), np.float32)
    for rule, want in [(rules.AlphaBeta(1, 0), [-1.0, 0.0]), (rules.AlphaBeta(2, 1), [-2.0, 0.5])]:
        R = fastlrp.Explainer(graph, fastlrp.Composite({"linear": rule}), backend=backend).explain(x, target=0)
        np.testing.assert_allclose(R[0], want, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonneg_input_paths(backend):
    """A ReLU producer (static) and an input that happens to be >= 0 (checked on
    the device) both take the x >= 0 path and must equal the reference."""
    rng = np.random.default_rng(3)
    for relu in (True, False):
        graph = layer_graph(rng, (3, 8, 8), (4, 3, 3, 3), True, relu, padding=1)
        x = np.abs(rng.standard_normal((2, 3, 8, 8))).astype(np.float32)
        for rule in (rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25)):
            got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x)
            assert rel_err(got, want) < RTOL_LAYER


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
    gpu = fastlrp.Explainer(graph, composite, backend=backend)
    want = fastlrp.Explainer(graph, composite, backend="reference").explain(x.astype(np.float64))
    got = gpu.explain(x)
    assert rel_err(got, want) < RTOL_NET
    cpu = fastlrp.Explainer(graph, composite, backend="cpu").explain(x)
    assert rel_err(got, cpu.astype(np.float64)) < RTOL_NET
    # several targets share one forward pass: same as one target at a time
    tg = np.tile(np.arange(3), (4, 1))
    many = gpu.explain(x, target=tg)
    assert many.shape == (4, 3) + graph.input_shape
    for k in range(3):
        np.testing.assert_allclose(many[:, k], gpu.explain(x, target=k), rtol=0, atol=1e-6 * np.abs(many).max())


def _structure_graph(rng):
    """Concat, permute, residual add, batchnorm node, non-ReLU activations."""
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1_flat"])
def test_structure_ops_and_conservation(backend, composite):
    rng = np.random.default_rng(2)
    try:
        graph = _structure_graph(rng)
    except (AttributeError, TypeError) as e:  # pragma: no cover - builder API
        pytest.skip(f"graph builder: {e}")
    x = rng.standard_normal((3,) + graph.input_shape).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, composite, x)
    assert rel_err(got, want) < RTOL_NET
    R, report = fastlrp.Explainer(graph, composite, backend=backend).explain(x, return_layers=True)
    np.testing.assert_allclose(report.relevance_out[report.names[-1]], report.explained, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_sample_and_regression(backend):
    rng = np.random.default_rng(4)
    gb = GraphBuilder((7,))
    h = gb.activation(gb.dense(gb.input, rng.standard_normal((5, 7)), rng.standard_normal(5)), "tanh")
    gb.dense(h, rng.standard_normal((1, 5)), None)
    graph = gb.build()
    x = rng.standard_normal(7).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, "epsilon_plus", x, target=None)
    assert got.shape == (7,)
    assert rel_err(got, want) < RTOL_LAYER


def test_out_of_memory_splits_the_batch():
    """The emulator's memory limit makes allocations fail: the batch is split and
    the result equals the unsplit one; a single sample that cannot fit raises an
    error with the sizes."""
    if _cuda_emu is None:
        pytest.skip("fastlrp._cuda_emu not built")
    rng = np.random.default_rng(9)
    graph = _small_vgg(rng)
    x = rng.standard_normal((8,) + graph.input_shape).astype(np.float32)
    ex = fastlrp.Explainer(graph, "epsilon_plus_flat", backend="cuda-emu")
    want = ex.explain(x)
    import gc

    gc.collect()  # device arrays of earlier tests' garbage must not be freed in the middle
    base = _cuda_emu.bytes_in_use()  # the uploaded weights
    _cuda_emu.reset_peak()
    ex.explain(x[:1])
    one = _cuda_emu.peak_bytes() - base  # what one sample needs at most
    try:
        _cuda_emu.set_memory_limit(base + 2 * one)  # one sample fits, eight do not
        got = ex.explain(x)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        _cuda_emu.set_memory_limit(base + one // 4)
        with pytest.raises(DeviceOutOfMemory, match="one sample needs more device memory .* asked for"):
            ex.explain(x[:1])
    finally:
        _cuda_emu.set_memory_limit(0)


def test_emulated_backend_refuses_gpu_arrays():
    if _cuda_emu is None:
        pytest.skip("fastlrp._cuda_emu not built")
    from fastlrp.backends.cuda import CudaBackend

    be = CudaBackend(emulate=True)

    class FakeGpu:
        __cuda_array_interface__ = {"shape": (1, 3), "typestr": "<f4", "data": (1, False), "version": 3}

    with pytest.raises(BackendError, match="emulated"):
        be.wrap(FakeGpu())


# --------------------------------------------------------------------------- real GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not _ext.cuda_available(), reason="no usable GPU")
def test_torch_cuda_input_zero_copy_and_errors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    rng = np.random.default_rng(1)
    graph = _small_resnet(rng)
    x = rng.standard_normal((5,) + graph.input_shape).astype(np.float32)
    ex = fastlrp.Explainer(graph, "epsilon_plus_flat", backend="cuda")
    want = ex.explain(x)
    xt = torch.from_numpy(x).cuda()
    got = ex.explain(xt)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-6 * np.abs(want).max())
    many = ex.explain(xt, target=torch.tensor([[0, 1]] * 5))
    assert tuple(many.shape) == (5, 2) + graph.input_shape
    one = ex.explain(xt[0])
    assert tuple(one.shape) == graph.input_shape
    with pytest.raises(BackendError, match="float32"):
        ex.explain(xt.double())
    with pytest.raises(BackendError, match="contiguous"):
        ex.explain(xt.transpose(2, 3))
