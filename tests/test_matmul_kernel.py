"""The core's batched product of small matrices (``fastlrp._core.batched_matmul``,
src/cpp/matmul_cpu.h) on every ISA this CPU runs, against float64 NumPy: odd sizes (not
multiples of the tiles, 1, 197), operands in every layout it reads in place (rows,
transposed, permuted heads, strided slices, zero-stride broadcast groups), the fused
multiply; and the cpu backend's ``matmul`` kernel built on it against the reference.

Tolerance: float32 sums of k products in order, |C - C64| <= 1e-5 * max(|A| |B| (|M|)).
"""

from __future__ import annotations

import numpy as np
import pytest

_ext = pytest.importorskip("fastlrp._ext")
core = _ext.core
if core is None or not hasattr(core, "batched_matmul"):  # pragma: no cover
    pytest.skip(f"fastlrp._core (with batched_matmul) not built: {_ext.core_error}", allow_module_level=True)

import fastlrp  # noqa: E402
from fastlrp.graph import GraphBuilder  # noqa: E402
from fastlrp.rules import GateEpsilon, UniformEpsilon  # noqa: E402
from _nets import rel_err  # noqa: E402

ISAS = {"generic": 0, "avx2": 1, "avx512": 2}


@pytest.fixture(autouse=True)
def _restore():
    yield
    core.set_num_threads(0)
    core.set_isa(-1)


def _isas():
    return list(core.gemm_info()["supported"])


def _layout(rng, shape, how):
    """A float32 array of `shape` (fresh normal values) laid out as `how`: 'rows' (C order),
    'cols' (each matrix transposed in memory), 'heads' (the leading axes permuted, as attention
    heads split from tokens), 'strided' (every other row and column of a bigger array)."""
    lead, (r, c) = tuple(shape[:-2]), shape[-2:]
    if how == "rows":
        return rng.standard_normal(shape).astype(np.float32)
    if how == "cols":
        return np.swapaxes(rng.standard_normal(lead + (c, r)).astype(np.float32), -1, -2)
    if how == "heads":  # (..., r, h, c) stored, viewed as (..., h, r, c)
        x = rng.standard_normal(lead[:-1] + (r, lead[-1], c)).astype(np.float32)
        return np.swapaxes(x, -2, -3)
    assert how == "strided"
    return rng.standard_normal(lead + (2 * r, 2 * c + 1)).astype(np.float32)[..., ::2, 1::2]


def _check(a, b, mul=None):
    got = core.batched_matmul(a, b, mul)
    want = a.astype(np.float64) @ b.astype(np.float64)
    bound = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    if mul is not None:
        want, bound = want * mul, bound * np.abs(mul)
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.all(np.abs(got - want) <= 1e-5 * bound.max()), np.abs(got - want).max() / bound.max()
    return got


SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (3, 4, 1), (13, 17, 33), (12, 32, 32), (25, 3, 47), (197, 64, 197),
          (197, 197, 64), (7, 100, 65)]


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_against_float64(isa, m, k, n):
    assert core.set_isa(ISAS[isa])
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    G = (2,) if m * k * n > 50000 else (2, 3)
    for la, lb in [("rows", "rows"), ("rows", "cols"), ("cols", "rows"), ("heads", "strided"), ("strided", "heads")]:
        a = _layout(rng, G + (m, k), la)
        b = _layout(rng, G + (k, n), lb)
        got = _check(a, b)
        np.testing.assert_array_equal(got, core.batched_matmul(np.ascontiguousarray(a), np.ascontiguousarray(b)))
    for lm in ("rows", "cols", "strided"):  # the fused multiply
        _check(_layout(rng, G + (m, k), "heads"), _layout(rng, G + (k, n), "cols"), _layout(rng, G + (m, n), lm))


@pytest.mark.parametrize("isa", _isas())
def test_broadcast_groups_and_threads(isa):
    """Zero group strides broadcast a matrix over the groups (NumPy broadcast_to); 1 and 2
    threads give the same bits, with groups to share out and with a single group (row blocks)."""
    assert core.set_isa(ISAS[isa])
    rng = np.random.default_rng(5)
    a = np.broadcast_to(rng.standard_normal((1, 3, 37, 29)).astype(np.float32), (4, 3, 37, 29))
    b = np.broadcast_to(rng.standard_normal((4, 1, 29, 41)).astype(np.float32), (4, 3, 29, 41))
    mul = np.broadcast_to(rng.standard_normal((37, 41)).astype(np.float32), (4, 3, 37, 41))
    for args in [(a, b, mul), (a[:1, :1], b[:1, :1], None), (_layout(rng, (1, 301, 70), "cols"),
                                                               _layout(rng, (1, 70, 90), "rows"), None)]:
        core.set_num_threads(1)
        one = _check(*args)
        core.set_num_threads(2)
        np.testing.assert_array_equal(one, core.batched_matmul(*args))


@pytest.mark.parametrize("isa", _isas())
def test_output_streamed_past_the_caches(isa):
    """A product of 8 MB or more goes to C with non-temporal stores (rows of odd length: every
    alignment of a row panel's start); same values, same bits on 1 and 2 threads."""
    assert core.set_isa(ISAS[isa])
    rng = np.random.default_rng(7)
    a, b = _layout(rng, (3, 803, 5), "heads"), _layout(rng, (3, 5, 877), "cols")
    mul = _layout(rng, (3, 803, 877), "rows")
    core.set_num_threads(1)
    one = _check(a, b, mul)
    core.set_num_threads(2)
    np.testing.assert_array_equal(one, core.batched_matmul(a, b, mul))


def test_sizes_without_work_and_errors():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 0)).astype(np.float32), rng.standard_normal((2, 0, 4)).astype(np.float32)
    np.testing.assert_array_equal(core.batched_matmul(a, b), np.zeros((2, 3, 4), np.float32))
    assert core.batched_matmul(np.ones((2, 0, 3), np.float32), np.ones((2, 3, 4), np.float32)).shape == (2, 0, 4)
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 4, 5)).astype(np.float32)
    with pytest.raises(TypeError, match="float32"):
        core.batched_matmul(a.astype(np.float64), b)
    with pytest.raises(ValueError, match="inner sizes"):
        core.batched_matmul(a, b[:, :3])
    with pytest.raises(ValueError, match="leading axes"):
        core.batched_matmul(a, b[:1])
    with pytest.raises(ValueError, match="product's shape"):
        core.batched_matmul(a, b, np.ones((2, 3, 4), np.float32))


def _matmul_graph(sa, sb, transpose_b):
    """matmul(a, b) of two slices of one input; b is the tanh of its slice (signed, not a softmax)."""
    na, nb = int(np.prod(sa)), int(np.prod(sb))
    gb = GraphBuilder((na + nb,))
    a = gb.reshape(gb.add_node("slice", gb.input, {"axis": 0, "start": 0, "stop": na}), sa)
    b = gb.reshape(gb.activation(gb.add_node("slice", gb.input, {"axis": 0, "start": na, "stop": na + nb}), "tanh"),
                   sb)
    gb.add_node("matmul", [gb.permute(a, (1, 0, 2)), b], {"transpose_b": transpose_b}, name="op")
    return gb.build(output="op")


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("rule", [UniformEpsilon(1.0), GateEpsilon(0, 1.0), GateEpsilon(1, 1.0)])
def test_matmul_kernel_against_reference(rule, transpose_b):
    """The cpu backend's matmul (in-place operands, fused multiplies) against the float64
    reference: a permuted left operand, b broadcast over a's leading axis, b transposed.
    (epsilon 1 against |z| of about 3: a float32 quotient R / s(z) that does not amplify the
    products' rounding, which at epsilon 1e-3 reached 2e-4 of the maximum on these inputs.)"""
    sa, sb = (19, 3, 13), ((1, 23, 13) if transpose_b else (1, 13, 23))
    graph = _matmul_graph(sa, sb, transpose_b)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2,) + graph.input_shape)
    R = rng.standard_normal((2, 3, 19, 23))
    comp = fastlrp.Composite(names={"op": rule})
    got = fastlrp.Explainer(graph, comp, backend="cpu").explain(x.astype(np.float32), target=R.astype(np.float32))
    want = fastlrp.Explainer(graph, comp, backend="reference").explain(x, target=R)
    assert got.dtype == np.float32
    assert rel_err(got, want) < 1e-5
