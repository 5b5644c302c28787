"""The installed package: extensions load, the CLI reports backends, CUDA is optional,
the SIMT emulator build is there only when asked for, and every extension module
exports the same rule-kind and epilogue tables."""

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


@pytest.fixture
def emu():
    """fastlrp._cuda_emu (test scaffolding, built with FASTLRP_CUDA_EMU=ON), or a skip saying how to build it."""
    mod, why = _ext.cuda_emu()
    if mod is None:
        pytest.skip(why)
    return mod


def test_emulator_module_runs_kernels(emu):
    """fastlrp._cuda_emu (the GPU kernel source on the host SIMT emulator) reports
    itself as emulated and runs a kernel."""
    _cuda_emu = emu
    assert _cuda_emu.emulated and _cuda_emu.available()
    assert "emulator" in _cuda_emu.device_name()
    x = np.arange(-5, 7, dtype=np.float32)
    p = _cuda_emu.malloc(x.nbytes)
    try:
        _cuda_emu.memcpy_htod(p, x)
        assert _cuda_emu.min_value(p, x.size) == -5.0
    finally:
        _cuda_emu.free(p)


def test_simt_emulator_barriers(emu):
    """The emulator that tests every GPU kernel here: flrp_syncthreads() is a real
    barrier (a shared-memory reversal that needs it comes out right), and kernels
    that break the barrier rules are reported, not silently run."""
    _cuda_emu = emu
    assert _cuda_emu.simt_selftest(0, 3) == 0
    with pytest.raises(RuntimeError, match="barrier divergence"):
        _cuda_emu.simt_selftest(1)
    with pytest.raises(RuntimeError, match="launch_sync"):
        _cuda_emu.simt_selftest(2)


@pytest.mark.gpu
def test_simt_barrier_kernel_on_gpu():
    cuda = _gpu_or_skip()
    assert cuda.simt_selftest(0, 40) == 0


def test_emulator_absence_is_explained():
    # Whether or not it is built, the loader answers without raising, and an absent
    # build says how to get one.
    mod, why = _ext.cuda_emu()
    assert (mod is None) == bool(why)
    if mod is None:
        assert "FASTLRP_CUDA_EMU=ON" in why


# The epilogues that the compiled GEMM / col2im kernels take as codes (rules.h's
# FASTLRP_EPILOGUES); the rule kinds are fastlrp.rules.PARAMETRIC_RULES.
EPILOGUES = {"none", "bias", "mulx", "mulpos", "mulneg", "mulxoff", "mulabs"}


def _built_modules():
    mods = {"_core": _ext.core}
    if _ext.cuda is not None:
        mods["_cuda"] = _ext.cuda
    if _ext.cuda_emu()[0] is not None:
        mods["_cuda_emu"] = _ext.cuda_emu()[0]
    return mods


def test_code_tables_are_exported_once_for_all_modules():
    from fastlrp import rules

    assert _ext.core is not None, _ext.core_error
    mods = _built_modules()
    for name, mod in mods.items():
        kinds, epis = mod.rule_kinds, mod.epilogues
        assert isinstance(kinds, dict) and isinstance(epis, dict), name
        assert kinds == _ext.core.rule_kinds and epis == _ext.core.epilogues, name
    kinds, epis = _ext.core.rule_kinds, _ext.core.epilogues
    assert set(kinds) == set(rules.PARAMETRIC_RULES)  # the dense/conv rules, each a code of rule_g
    assert set(epis) == EPILOGUES
    # codes are 0..n-1, distinct: the bindings range-check them
    assert sorted(kinds.values()) == list(range(len(kinds)))
    assert sorted(epis.values()) == list(range(len(epis)))


def test_epilogue_codes_mean_their_names():
    """Each code of the epilogue table, run through _core.conv_gemm (a 1x1 conv),
    applies what its name says to v = W x."""
    core = _ext.core
    rng = np.random.default_rng(0)
    n, c, o, hw = 2, 3, 4, (2, 3)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    W = rng.standard_normal((o, c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    mul = rng.standard_normal((n, o, *hw)).astype(np.float32)
    off = rng.standard_normal((o, *hw)).astype(np.float32)
    v = np.einsum("oc,nchw->nohw", W.astype(np.float64), x.astype(np.float64))
    want = {
        "none": v,
        "bias": v + b[None, :, None, None],
        "mulx": v * mul,
        "mulpos": v * np.maximum(mul, 0),
        "mulneg": v * np.minimum(mul, 0),
        "mulxoff": v * (mul - off[None]),
        "mulabs": v * np.abs(mul),
    }
    A = core.pack_weights(W)
    for name, code in core.epilogues.items():
        y = core.conv_gemm(x, A, (1, 1), (1, 1), (0, 0), (1, 1), hw, 0, code, b, mul, off)
        np.testing.assert_allclose(y, want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="epilogue"):
        core.conv_gemm(x, A, (1, 1), (1, 1), (0, 0), (1, 1), hw, 0, len(core.epilogues))
    with pytest.raises(ValueError, match="unknown rule kind"):
        core.rule_g(len(core.rule_kinds), np.zeros((1, 1, 1), np.float32), None, None, None, None, 1, 1e-6)
