"""What only the GPU engine (fastlrp.backends.cuda) has: out-of-memory splitting,
GPU-array input (zero copy on a GPU, refused by the emulator).

The tests run on ``cuda-emu`` (the same kernel source compiled for the host SIMT
emulator, fastlrp._cuda_emu, built with FASTLRP_CUDA_EMU=ON as CI does) or on
``cuda`` (a real GPU; marked ``gpu`` and skipped without one). Its ops, rules,
single samples and whole networks against the reference, shared with the other
backends: test_backend_matrix.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext
from fastlrp.backends.base import BackendError, DeviceOutOfMemory
from _nets import cuda_emu, cuda_emu_missing, small_resnet, small_vgg


def test_out_of_memory_splits_the_batch():
    """The emulator's memory limit makes allocations fail: the batch is split and
    the result equals the unsplit one; a single sample that cannot fit raises an
    error with the sizes."""
    if cuda_emu is None:
        pytest.skip(cuda_emu_missing)
    rng = np.random.default_rng(9)
    graph = small_vgg(rng)
    x = rng.standard_normal((8,) + graph.input_shape).astype(np.float32)
    ex = fastlrp.Explainer(graph, "epsilon_plus_flat", backend="cuda-emu")
    want = ex.explain(x)
    import gc

    gc.collect()  # device arrays of earlier tests' garbage must not be freed in the middle
    base = cuda_emu.bytes_in_use()  # the uploaded weights
    cuda_emu.reset_peak()
    ex.explain(x[:1])
    one = cuda_emu.peak_bytes() - base  # what one sample needs at most
    try:
        cuda_emu.set_memory_limit(base + 2 * one)  # one sample fits, eight do not
        got = ex.explain(x)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        cuda_emu.set_memory_limit(base + one // 4)
        with pytest.raises(DeviceOutOfMemory, match="one sample needs more device memory .* asked for"):
            ex.explain(x[:1])
    finally:
        cuda_emu.set_memory_limit(0)


def test_emulated_backend_refuses_gpu_arrays():
    if cuda_emu is None:
        pytest.skip(cuda_emu_missing)
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
    graph = small_resnet(rng)
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


def test_gamma_on_signed_inputs_runs_on_w_and_abs_w():
    """Gamma on a signed input takes LinearPlan's |W| form on the GPU engine too (no
    [W+ | W-] operands uploaded), equal to the float64 reference, dense and strided conv
    layers with and without a bias."""
    if cuda_emu is None:
        pytest.skip(cuda_emu_missing)
    from fastlrp.backends.cuda import CudaBackend
    from _nets import RTOL_LAYER, gamma_signed_layer_cases, rel_err

    be = CudaBackend(emulate=True)
    for graph, node, rule, x, R, want in gamma_signed_layer_cases(31):
        op = be.prepare(graph, graph[node], rule)
        assert op.h.abs_form and op.A_posneg is None and op.A_abs is not None
        _, ctx = op.forward([be.upload(x)])
        got = op.relevance(ctx, be.upload(R))[0].numpy()
        assert rel_err(got, want) < RTOL_LAYER, (node, rule)
