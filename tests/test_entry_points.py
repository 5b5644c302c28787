"""Flags and compiled entry points: bad sizes and geometry are ValueErrors, empty
batches are empty results, never a crash (SIGFPE, SIGSEGV, libgomp ending the
process). The compiled cases run in a child process, so a crash is a failed test
that names the call, not a dead test run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlrp
from fastlrp import _ext

from _graphs import small_graph


@pytest.mark.parametrize("n", [40000, 100000, 0, -1, 2**31])
def test_set_num_threads_refuses_out_of_range(n):
    with pytest.raises(ValueError, match=r"set_num_threads needs 1 <= n <= \d+"):
        fastlrp.set_num_threads(n)


@pytest.mark.parametrize("n", [2.5, "4", None])
def test_set_num_threads_refuses_non_integers(n):
    with pytest.raises(TypeError, match="whole number of threads"):
        fastlrp.set_num_threads(n)


def test_set_num_threads_accepts_the_limit_and_explains():
    g = small_graph()
    x = np.random.default_rng(0).normal(size=(3, 1, 6, 6)).astype(np.float32)
    ref = fastlrp.Explainer(g, "epsilon_plus", backend="reference").explain(x)
    before = _ext.core.get_num_threads() if _ext.core is not None else None
    try:
        fastlrp.set_num_threads(fastlrp.max_threads())
        R = fastlrp.Explainer(g, "epsilon_plus", backend="auto").explain(x)
    finally:
        fastlrp.set_num_threads(before or 2)
    np.testing.assert_allclose(R, ref, rtol=1e-4, atol=1e-6)


#: Each case: a name and a statement on ``c`` (fastlrp._core), ``np`` and float32 helpers;
#: "error" cases must raise ValueError/TypeError, "ok" cases must return an array of the stated shape.
CORE_CASES = {
    "set_num_threads(40000)": ("error", "c.set_num_threads(40000)"),
    "rule_g empty batch": ("ok", "c.rule_g(0, f(0, 4, 5), f(0, 4, 5), None, None, None, 1, 1e-6)", (0, 4, 5)),
    "rule_g empty batch alphabeta": ("ok", "c.rule_g(2, f(0, 4, 5), f(0, 4, 5), f(0, 4, 5), None, None, 2, 1e-6, "
                                           "2.0, 1.0)", (0, 8, 5)),
    "rule_g zero outputs": ("ok", "c.rule_g(0, f(3, 0, 5), f(3, 0, 5), None, None, None, 1, 1e-6)", (3, 0, 5)),
    "rule_g groups 0": ("error", "c.rule_g(0, f(2, 4, 5), f(2, 4, 5), None, None, None, 0, 1e-6)"),
    "rule_g float64": ("error", "c.rule_g(0, np.ones((2, 4, 5)), None, None, None, None, 1, 1e-6)"),
    "conv_gemm stride 0": ("error", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (0, 1), (0, 0), "
                                    "(1, 1), (3, 3))"),
    "conv_gemm dilation 0": ("error", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (1, 1), (0, 0), "
                                      "(0, 1), (3, 3))"),
    "conv_gemm negative padding crops": ("ok", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (1, 1), "
                                               "(-1, 0), (1, 1), (3, 3))", (1, 3, 3, 3)),
    "conv_gemm padding beyond the image": ("ok", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (1, 1), "
                                                 "(-9, 40), (1, 1), (3, 3))", (1, 3, 3, 3)),
    "conv_gemm negative output": ("error", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (1, 1), "
                                           "(0, 0), (1, 1), (-3, 3))"),
    "conv_gemm empty batch": ("ok", "c.conv_gemm(f(0, 2, 5, 5), c.pack_weights(f(3, 18)), (3, 3), (1, 1), (0, 0), "
                                    "(1, 1), (3, 3))", (0, 3, 3, 3)),
    "conv_gemm wrong K": ("error", "c.conv_gemm(f(1, 2, 5, 5), c.pack_weights(f(3, 17)), (3, 3), (1, 1), (0, 0), "
                                   "(1, 1), (3, 3))"),
    "col2im stride 0": ("error", "c.col2im(f(1, 18, 9), (5, 5), 2, (3, 3), (0, 1), (0, 0), (1, 1), (3, 3))"),
    "col2im kernel 0": ("error", "c.col2im(f(1, 0, 9), (5, 5), 2, (0, 3), (1, 1), (0, 0), (1, 1), (3, 3))"),
    "col2im wrong size": ("error", "c.col2im(f(1, 18, 8), (5, 5), 2, (3, 3), (1, 1), (0, 0), (1, 1), (3, 3))"),
    "col2im empty batch": ("ok", "c.col2im(f(0, 18, 9), (5, 5), 2, (3, 3), (1, 1), (0, 0), (1, 1), (3, 3))",
                           (0, 2, 5, 5)),
    "maxpool stride 0": ("error", "c.maxpool_forward(f(1, 2, 4, 4), (2, 2), (0, 2), (0, 0), (1, 1), (2, 2))"),
    "maxpool negative padding": ("error", "c.maxpool_forward(f(1, 2, 4, 4), (2, 2), (2, 2), (0, -1), (1, 1), (2, 2))"),
    "maxpool empty batch": ("ok", "c.maxpool_forward(f(0, 2, 4, 4), (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))[0]",
                            (0, 2, 2, 2)),
    "maxpool_backward index out of range": (
        "ok", "c.maxpool_backward(f(1, 1, 2, 2), np.full((1, 1, 2, 2), 10**6, np.int32), (4, 4))", (1, 1, 4, 4)),
    "maxpool_backward negative size": (
        "error", "c.maxpool_backward(f(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int32), (-4, 4))"),
    "gemm inner mismatch": ("error", "c.gemm(f(3, 4), f(5, 2))"),
    "gemm empty": ("ok", "c.gemm(f(0, 4), f(4, 2))", (0, 2)),
    "gemm empty inner": ("ok", "c.gemm(f(3, 0), f(0, 2))", (3, 2)),
    "pack_weights groups 0": ("error", "c.pack_weights(f(4, 3), 0)"),
    "pack_weights groups not dividing": ("error", "c.pack_weights(f(4, 3), 3)"),
}

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fastlrp import _core as c

    def f(*shape):
        return np.random.default_rng(0).normal(size=shape).astype(np.float32) + 0.1

    name, kind, stmt = sys.argv[1:4]
    try:
        out = eval(stmt)
    except (ValueError, TypeError) as e:
        print(json.dumps({"raised": type(e).__name__, "message": str(e)}))
    else:
        print(json.dumps({"shape": list(np.shape(out)), "finite": bool(np.all(np.isfinite(out)))}))
""")


@pytest.mark.skipif(_ext.core is None, reason=f"fastlrp._core not built: {_ext.core_error}")
@pytest.mark.parametrize("name", sorted(CORE_CASES))
def test_compiled_entry_point_checks_its_sizes(name):
    kind, stmt, *shape = CORE_CASES[name]
    p = subprocess.run([sys.executable, "-c", _CHILD, name, kind, stmt], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{name}: the process ended with {p.returncode} ({p.stderr[-500:]})"
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if kind == "error":
        assert "raised" in res and res["message"], f"{name}: expected a ValueError/TypeError, got {res}"
    else:
        assert res.get("shape") == list(shape[0]) and res["finite"], f"{name}: {res}"


def test_empty_batch_is_a_clear_error_on_every_backend():
    g = small_graph()
    for backend in ("reference", "auto"):
        ex = fastlrp.Explainer(g, "epsilon_plus", backend=backend)
        with pytest.raises(fastlrp.InputError, match="empty batch"):
            ex.explain(np.zeros((0, 1, 6, 6), np.float32))


@pytest.mark.parametrize("raw, driver, runtime, expected", [
    ("CUDA driver version is insufficient for CUDA runtime version", 0, 13000, "has no NVIDIA GPU driver, so no GPU"),
    ("CUDA driver version is insufficient for CUDA runtime version", 12040, 13000,
     "supports CUDA up to 12.4, older than the CUDA 13.0 fastlrp was built with: update the driver"),
    ("no CUDA-capable device is detected", 13000, 13000, "the NVIDIA driver finds no GPU"),
    ("out of memory", 13000, 13000, "out of memory"),
])
def test_no_gpu_messages_say_so_plainly(raw, driver, runtime, expected, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    msg = _ext.plain_cuda_reason(raw, driver, runtime)
    assert expected in msg and raw in msg


def test_cuda_backend_error_on_this_machine_is_plain():
    """Where the CUDA module is built but no GPU is usable, the backend's error says why plainly."""
    if _ext.cuda is None or _ext.cuda_available():
        pytest.skip("needs fastlrp._cuda built on a machine without a usable GPU")
    from fastlrp.backends.base import BackendError

    with pytest.raises(BackendError) as e:
        fastlrp.get_backend("cuda")
    if _ext.cuda.driver_version() == 0:
        assert "no NVIDIA GPU driver" in str(e.value)
