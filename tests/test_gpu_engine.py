"""What only the GPU engine (fastlrp.backends.cuda) has: structure ops with
conservation, single samples, out-of-memory splitting, GPU-array input.

Every test runs on ``cuda-emu`` (the same kernel source compiled for the host
SIMT emulator, fastlrp._cuda_emu: runs everywhere, CI included) and, where it
makes sense, on ``cuda`` (a real GPU; marked ``gpu`` and skipped without one).
The per-layer and whole-network comparisons with the reference, shared with the
CPU backend, are in test_kernels_vs_reference.py.  Tolerances: tests/_nets.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext
from fastlrp.backends.base import BackendError, DeviceOutOfMemory
from fastlrp.graph import GraphBuilder
from _nets import GPU_BACKENDS as BACKENDS
from _nets import RTOL_LAYER, RTOL_NET, _cuda_emu, _small_resnet, _small_vgg, explain_vs_reference, rel_err


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
