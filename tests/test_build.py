"""The installed package: extensions load, the CLI reports backends, CUDA is optional."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fastlrp import _ext


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastlrp", *args], capture_output=True, text=True, timeout=120)


def test_core_extension_is_loaded():
    assert _ext.core is not None, _ext.core_error
    info = _ext.core.build_info()
    assert {"compiler", "openmp", "simd_paths", "num_threads"} <= set(info)
    assert info["num_threads"] >= 1
    assert "generic" in info["simd_paths"]


def test_extension_is_installed_not_from_source_tree():
    # The tests must exercise the installed package (site-packages), not python/.
    import fastlrp

    assert "site-packages" in fastlrp.__file__ or "dist-packages" in fastlrp.__file__, fastlrp.__file__


def test_info_command_reports_cpu_backend():
    res = _run("info")
    assert res.returncode == 0, res.stderr
    import fastlrp

    assert f"fastlrp {fastlrp.__version__}" in res.stdout
    assert "numpy" in res.stdout
    assert "reference : usable" in res.stdout
    assert "cpu       : usable" in res.stdout
    assert "cuda" in res.stdout and "numba" in res.stdout


def test_no_command_prints_help():
    res = _run()
    assert res.returncode == 2
    assert "info" in res.stdout


def test_thread_control_roundtrip():
    core = _ext.core
    old = core.get_num_threads()
    try:
        core.set_num_threads(1)
        assert core.get_num_threads() == 1
    finally:
        core.set_num_threads(old)
    assert core.get_num_threads() == old


def test_cuda_extension_imports_without_gpu():
    # _ext never raises; when _cuda is built it must import and answer on any machine.
    if _ext.cuda is None:
        assert _ext.cuda_error
        assert not _ext.cuda_available()
        return
    assert isinstance(_ext.cuda.available(), bool)
    if not _ext.cuda_available():
        assert _ext.cuda_unavailable_reason()


def test_cuda_backend_error_is_clear_without_gpu():
    if _ext.cuda_available():
        pytest.skip("a GPU is available")
    from fastlrp.backends.base import BackendError
    from fastlrp.backends.cuda import CudaBackend

    with pytest.raises(BackendError, match="CUDA backend"):
        CudaBackend()


def _gpu_or_skip():
    if not _ext.cuda_available():
        pytest.skip(f"no usable CUDA GPU: {_ext.cuda_unavailable_reason()}")
    return _ext.cuda


@pytest.mark.gpu
def test_cuda_backend_constructs_with_gpu():
    _gpu_or_skip()
    from fastlrp.backends.cuda import CudaBackend

    assert CudaBackend().name == "cuda"


def test_emulator_module_runs_kernels():
    """fastlrp._cuda_emu (the GPU kernel source on the host SIMT emulator) is built
    everywhere and reports itself as emulated."""
    from fastlrp import _cuda_emu

    assert _cuda_emu.emulated and _cuda_emu.available()
    assert "emulator" in _cuda_emu.device_name()
    x = np.arange(-5, 7, dtype=np.float32)
    p = _cuda_emu.malloc(x.nbytes)
    try:
        _cuda_emu.memcpy_htod(p, x)
        assert _cuda_emu.min_value(p, x.size) == -5.0
    finally:
        _cuda_emu.free(p)


def test_simt_emulator_barriers():
    """The emulator that tests every GPU kernel here: flrp_syncthreads() is a real
    barrier (a shared-memory reversal that needs it comes out right), and kernels
    that break the barrier rules are reported, not silently run."""
    from fastlrp import _cuda_emu

    assert _cuda_emu.simt_selftest(0, 3) == 0
    with pytest.raises(RuntimeError, match="barrier divergence"):
        _cuda_emu.simt_selftest(1)
    with pytest.raises(RuntimeError, match="launch_sync"):
        _cuda_emu.simt_selftest(2)


@pytest.mark.gpu
def test_simt_barrier_kernel_on_gpu():
    cuda = _gpu_or_skip()
    assert cuda.simt_selftest(0, 40) == 0
