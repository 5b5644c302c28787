"""The GPU engine's non-GEMM kernels (src/cuda/kernels_elem.cuh) against fastlrp._core,
NumPy and the reference backend's definitions.

Every test runs on ``fastlrp._cuda_emu`` (the same kernel source under the host
SIMT emulator, always built) and again on the real ``fastlrp._cuda``, marked
``gpu`` and skipped unless a device is available.  Outputs are poisoned (NaN, or
0x7f7f7f7f for int32) before each launch, so a kernel that skips an element fails.

Tolerances:
- rule_g, stabilize, add/scale/copy/permute, maxpool, batchnorm: the same IEEE float
  operations as the CPU code (rules.h's mul_rn keeps nvcc from contracting a*b+c
  into an FMA), so the emulator must match fastlrp._core / NumPy exactly; on a GPU
  the same is expected, checked with a small slack (rtol 1e-6, or 1e-6 of max|ref|
  for rule_g) and, for max-pool relevance, the float atomics' arbitrary order.
- activations, softmax: rtol 1e-6 (softmax 1e-5) against the float64 reference,
  plus an atol of 1e-6 * max|ref| for outputs near 0 whose float32 argument
  rounding is amplified (erfc's tail).
- sums (average pooling): 1e-5 of max|ref| against float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastlrp.graph import Node, pool_output_length
from fastlrp.ops.elementwise import activation_function
from fastlrp.ops.pool import avgpool_matrices
from fastlrp.ops.spec import stabilize

core = pytest.importorskip("fastlrp._core")

F32 = np.float32


@pytest.fixture(
    params=[
        pytest.param("emu", id="emu"),
        # the int64-index instantiations (normally only for 2^31-element arrays)
        pytest.param("emu64", id="emu64"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ]
)
def dev(request):
    """A small device-memory helper around fastlrp._cuda_emu or fastlrp._cuda."""
    if request.param.startswith("emu"):
        mod = pytest.importorskip("fastlrp._cuda_emu")
    else:
        mod = pytest.importorskip("fastlrp._cuda")
        if not mod.available():
            pytest.skip(f"no CUDA device: {mod.why_unavailable()}")
    d = Dev(mod)
    mod._set_force_int64_indices(request.param == "emu64")
    try:
        yield d
    finally:
        mod._set_force_int64_indices(False)
        d.free_all()


class Dev:
    def __init__(self, mod):
        self.m = mod
        self.emulated = bool(mod.emulated)
        self.ptrs = []

    def _alloc(self, nbytes):
        p = self.m.malloc(max(int(nbytes), 1))
        self.ptrs.append(p)
        return p

    def put(self, a, dtype=F32):
        a = np.ascontiguousarray(a, dtype=dtype)
        p = self._alloc(a.nbytes)
        if a.nbytes:
            self.m.memcpy_htod(p, a)
        return p

    def poisoned(self, shape, dtype=F32):
        """A device buffer filled with NaN (float) or 0x7f7f7f7f (int32)."""
        if np.dtype(dtype) == np.int32:
            return self.put(np.full(shape, 0x7F7F7F7F, np.int32), np.int32)
        return self.put(np.full(shape, np.nan, F32))

    def get(self, p, shape, dtype=F32):
        out = np.empty(shape, dtype)
        if out.nbytes:
            self.m.memcpy_dtoh(out, p)
        return out

    def free_all(self):
        self.m.synchronize()
        for p in self.ptrs:
            self.m.free(p)
        self.ptrs = []

    # comparisons ---------------------------------------------------------------------
    def same(self, got, want, rtol=1e-6):
        """Equal in the emulator (the same float ops as the CPU); rtol on a GPU (unverified: slack)."""
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape
        if self.emulated:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


def rnd(rng, *shape, zeros=0.0):
    a = rng.standard_normal(shape).astype(F32)
    if zeros:
        a[rng.random(shape) < zeros] = 0.0
    return a


def close_sum(got, want, rtol=1e-5):
    """|got - want| <= rtol * max|want| elementwise (sums: their rounding scales with the terms)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "non-finite (unwritten?) output"
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= rtol * scale, f"max err {err:.3e} > {rtol:.0e} * {scale:.3e}"


# ===================================================================================
# rule_g
# ===================================================================================
RULE_CASES = [(k, b, zb) for k in range(7) for b in (False, True) for zb in (False, True)]


@pytest.mark.parametrize("kind,with_bias,zero_bias", RULE_CASES)
@pytest.mark.parametrize("groups", [1, 3])
def test_rule_g_matches_core(dev, kind, with_bias, zero_bias, groups):
    rng = np.random.default_rng(100 * kind + 10 * groups + 2 * with_bias + zero_bias)
    n, Og, P = 3, 2, 13
    O = Og * groups
    R = rnd(rng, n, O, P, zeros=0.1)
    R[-1, -1, -1] = np.nan  # propagates as in _core
    out = rnd(rng, n, O, P, zeros=0.1)
    out[0, 0, :3] = (0.0, -0.0, 1e-30)  # the sign(0) = +1 convention and a tiny z
    psum = rnd(rng, n, O, P, zeros=0.1)
    zc = rnd(rng, O, P, zeros=0.1)
    bias = rnd(rng, O) if with_bias else None
    args = dict(eps=1e-3, alpha=1.7, beta=0.7, gamma=0.25, zero_bias=zero_bias)

    def check(flat_group_sum=False, sumdiff=False):
        want = core.rule_g(kind, R, out, psum, bias, zc, groups, args["eps"], args["alpha"], args["beta"],
                           args["gamma"], zero_bias, flat_group_sum, sumdiff)
        g = dev.poisoned(want.shape)
        dev.m.rule_g(kind, dev.put(R), dev.put(out), dev.put(psum), dev.put(bias) if with_bias else 0,
                     dev.put(zc), g, n=n, O=O, P=P, groups=groups, flat_group_sum=flat_group_sum, sumdiff=sumdiff,
                     **args)
        got = dev.get(g, want.shape)
        if dev.emulated:
            np.testing.assert_array_equal(got, want)
        else:
            close_sum(got, want, 1e-6)

    for fgs in ((False, True) if kind == 5 else (False,)):
        check(flat_group_sum=fgs)
    kinds = dict(core.rule_kinds)
    if kind in (kinds["alphabeta"], kinds["gamma"]):
        check(sumdiff=True)  # the halves as (g0 + g1, g0 - g1) planes, as _core writes them
    else:
        with pytest.raises(ValueError, match="sumdiff"):
            dev.m.rule_g(kind, dev.put(R), dev.put(out), dev.put(psum), 0, dev.put(zc), dev.poisoned((2, n, O, P)),
                         n=n, O=O, P=P, groups=groups, sumdiff=True, **args)


def test_rule_g_only_needed_operands(dev):
    """Operands a rule does not read may be null (0), as in _core."""
    rng = np.random.default_rng(1)
    n, O, P = 2, 4, 5
    R, out, ps, zc = rnd(rng, n, O, P), rnd(rng, n, O, P), rnd(rng, n, O, P), rnd(rng, O, P)
    for kind, use in [(0, "o"), (1, "p"), (2, "op"), (3, "op"), (4, "oz"), (5, "z"), (6, "z")]:
        want = core.rule_g(kind, R, out if "o" in use else None, ps if "p" in use else None, None,
                           zc if "z" in use else None, 1, 1e-2)
        g = dev.poisoned(want.shape)
        dev.m.rule_g(kind, dev.put(R), dev.put(out) if "o" in use else 0, dev.put(ps) if "p" in use else 0, 0,
                     dev.put(zc) if "z" in use else 0, g, n=n, O=O, P=P, groups=1, eps=1e-2)
        dev.same(dev.get(g, want.shape), want, rtol=1e-5)
        with pytest.raises(ValueError, match="rule_g"):
            dev.m.rule_g(kind, dev.put(R), 0, 0, 0, 0, g, n=n, O=O, P=P, groups=1, eps=1e-2)


# ===================================================================================
# max pooling
# ===================================================================================
# (h, w, kernel, stride, pad, dilation, ceil_mode)
MAXPOOL_CASES = [
    (9, 11, (3, 3), (2, 2), (1, 1), (1, 1), False),  # overlapping windows, padding
    (10, 12, (2, 2), (2, 2), (0, 0), (1, 1), False),  # the VGG case (the CPU's fast path)
    (7, 9, (3, 2), (2, 1), (1, 0), (2, 1), False),  # dilation, mixed strides
    (8, 8, (3, 3), (2, 2), (0, 0), (1, 1), True),  # ceil mode: a partial last window
    (9, 7, (3, 3), (3, 2), (1, 1), (1, 2), True),
    (1, 17, (1, 3), (1, 2), (0, 1), (1, 1), False),  # a 1-d pool
    (2, 2, (1, 1), (2, 2), (1, 1), (1, 1), False),  # windows entirely in padding: -inf, idx -1
]


def _maxpool_run(dev, x4, kernel, stride, pad, dil, oh, ow):
    N, C, H, W = x4.shape
    y, idx = dev.poisoned((N, C, oh, ow)), dev.poisoned((N, C, oh, ow), np.int32)
    dev.m.maxpool_forward(dev.put(x4), y, idx, planes=N * C, h=H, w=W, kh=kernel[0], kw=kernel[1], sh=stride[0],
                          sw=stride[1], ph=pad[0], pw=pad[1], dh=dil[0], dw=dil[1], oh=oh, ow=ow)
    return dev.get(y, (N, C, oh, ow)), dev.get(idx, (N, C, oh, ow), np.int32), idx


@pytest.mark.parametrize("case", MAXPOOL_CASES)
def test_maxpool_matches_core(dev, case):
    H, W, kernel, stride, pad, dil, ceil = case
    oh = pool_output_length(H, kernel[0], stride[0], (pad[0], pad[0]), dil[0], ceil)
    ow = pool_output_length(W, kernel[1], stride[1], (pad[1], pad[1]), dil[1], ceil)
    rng = np.random.default_rng(H * W)
    N, C = 2, 3
    # few distinct values: many ties, so "first arg-max" is exercised
    x = rng.integers(-3, 4, size=(N, C, H, W)).astype(F32)
    want_y, want_idx = core.maxpool_forward(x, kernel, stride, pad, dil, (oh, ow))
    got_y, got_idx, idx_ptr = _maxpool_run(dev, x, kernel, stride, pad, dil, oh, ow)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_idx, want_idx)

    R = rnd(rng, N, C, oh, ow)
    want_r = core.maxpool_backward(R, want_idx, (H, W))
    r_in = dev.poisoned((N, C, H, W))
    dev.m.maxpool_backward(dev.put(R), idx_ptr, r_in, planes=N * C, in_size=H * W, out_size=oh * ow)
    got_r = dev.get(r_in, (N, C, H, W))
    if dev.emulated:  # atomics run in output order there, as the CPU loop adds
        np.testing.assert_array_equal(got_r, want_r)
    else:
        close_sum(got_r, want_r, 1e-6)


def test_maxpool_nan_and_inf(dev):
    """NaN wins its window (first NaN), -inf loses to anything else, as in _core's general path."""
    rng = np.random.default_rng(5)
    x = rnd(rng, 1, 2, 7, 7)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 1, :3, :3] = -np.inf
    args = ((3, 3), (2, 2), (1, 1), (1, 1))
    want_y, want_idx = core.maxpool_forward(x, *args, (4, 4))
    got_y, got_idx, _ = _maxpool_run(dev, x, *args, 4, 4)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_idx, want_idx)


# ===================================================================================
# average pooling
# ===================================================================================
def _avg_mats(in_hw, kernel, stride, pad, out_hw, cip, div):
    """The registry's per-axis matrices of an average pool (as every backend takes them)."""
    attrs = {"dims": 2, "kernel": kernel, "stride": stride, "padding": pad, "count_include_pad": cip,
             "divisor_override": div}
    return avgpool_matrices((1, *in_hw), Node("pool", "avgpool", [], attrs, {}, (1, *out_hw)))


# (h, w, kernel, stride, pad pairs, ceil, count_include_pad, divisor_override)
AVG_CASES = [
    ("k3s2p1", 9, 11, (3, 3), (2, 2), ((1, 1), (1, 1)), False, True, None),
    ("no_pad_count", 9, 11, (3, 3), (2, 2), ((1, 1), (1, 1)), False, False, None),
    ("ceil", 8, 7, (3, 2), (2, 2), ((1, 1), (0, 0)), True, False, None),
    ("ceil_cip", 8, 7, (3, 3), (2, 2), ((0, 0), (1, 1)), True, True, None),
    ("divisor", 6, 6, (2, 2), (2, 2), ((0, 0), (0, 0)), False, True, 3),
    ("overlap_s1", 5, 6, (3, 3), (1, 1), ((1, 1), (1, 1)), False, True, None),
]


def _avg_case(name, H, W, kernel, stride, pads, ceil, cip, div):
    oh = pool_output_length(H, kernel[0], stride[0], pads[0], 1, ceil)
    ow = pool_output_length(W, kernel[1], stride[1], pads[1], 1, ceil)
    return _avg_mats((H, W), kernel, stride, pads, (oh, ow), cip, div), (oh, ow)


def _adaptive_case(H, W, oh, ow):
    node = Node("pool", "adaptive_avgpool", [], {"dims": 2, "output_size": (oh, ow)}, {}, (1, oh, ow))
    return avgpool_matrices((1, H, W), node), (oh, ow)


def _all_avg_cases():
    cases = [pytest.param(c[1], c[2], _avg_case(*c), id=c[0]) for c in AVG_CASES]
    cases += [
        pytest.param(7, 10, _adaptive_case(7, 10, 3, 4), id="adaptive"),
        pytest.param(5, 9, _adaptive_case(5, 9, 5, 9), id="adaptive_identity"),
        pytest.param(9, 8, _adaptive_case(9, 8, 1, 1), id="global"),
        # a 1-d pool: h = oh = 1, mh = [[1]]
        pytest.param(1, 13, _avg_case("1d", 1, 13, (1, 3), (1, 2), ((0, 0), (1, 1)), False, True, None), id="1d"),
    ]
    return cases


def _avg_run(dev, x, mats, out_hw):
    N, C, H, W = x.shape
    oh, ow = out_hw
    mh, mw = (F32(m) for m in mats)
    (bho, bhi), (bwo, bwi) = dev.m.avgpool_bands(mh), dev.m.avgpool_bands(mw)
    ptrs = dict(mh=dev.put(mh), mw=dev.put(mw), bh_out=dev.put(bho, np.int32), bh_in=dev.put(bhi, np.int32),
                bw_out=dev.put(bwo, np.int32), bw_in=dev.put(bwi, np.int32))
    y = dev.poisoned((N, C, oh, ow))
    dev.m.avgpool_forward(dev.put(x), y, **ptrs, planes=N * C, h=H, w=W, oh=oh, ow=ow)
    return dev.get(y, (N, C, oh, ow)), ptrs


@pytest.mark.parametrize("H,W,case", _all_avg_cases())
def test_avgpool_forward_and_relevance(dev, H, W, case):
    mats, out_hw = case
    oh, ow = out_hw
    assert mats[0].shape == (oh, H) and mats[1].shape == (ow, W)
    rng = np.random.default_rng(H * 100 + W)
    N, C, eps = 2, 3, 1e-2
    x = rnd(rng, N, C, H, W)
    x64 = x.astype(np.float64)
    z = np.einsum("nchw,oh,pw->ncop", x64, mats[0], mats[1])
    got_y, ptrs = _avg_run(dev, x, mats, out_hw)
    close_sum(got_y, z)

    # Norm: den = s(z) per sample
    R = rnd(rng, N, C, oh, ow)
    den = F32(stabilize(z, eps))
    want = x64 * np.einsum("ncop,oh,pw->nchw", R / den.astype(np.float64), mats[0], mats[1])
    r_in = dev.poisoned((N, C, H, W))
    dev.m.avgpool_relevance(dev.put(R), dev.put(den), dev.put(x), r_in, **ptrs, planes=N * C, h=H, w=W, oh=oh,
                            ow=ow, den_per_sample=True)
    close_sum(dev.get(r_in, x.shape), want)

    # Flat: den = s(pool(ones)) per channel, shared by the samples; no x factor
    ones = np.ones((1, C, H, W))
    den_c = F32(stabilize(np.einsum("nchw,oh,pw->ncop", ones, mats[0], mats[1]), eps))[0]  # (C, oh, ow)
    want = np.einsum("ncop,oh,pw->nchw", R / den_c[None].astype(np.float64), mats[0], mats[1])
    r_in = dev.poisoned((N, C, H, W))
    dev.m.avgpool_relevance(dev.put(R), dev.put(den_c), 0, r_in, **ptrs, planes=N * C, h=H, w=W, oh=oh, ow=ow,
                            channels=C, den_per_sample=False)
    close_sum(dev.get(r_in, x.shape), want)


def test_avgpool_bands(dev):
    m = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 2]], F32)
    out_band, in_band = dev.m.avgpool_bands(m)
    assert out_band.dtype == in_band.dtype == np.int32
    np.testing.assert_array_equal(out_band, [[0, 2], [1, 4], [0, 0], [4, 5]])  # per row: its nonzero columns
    np.testing.assert_array_equal(in_band, [[0, 1], [0, 2], [1, 2], [1, 2], [3, 4]])  # per column: rows reading it
    for S in _avg_case(*AVG_CASES[0])[0] + _adaptive_case(7, 10, 3, 4)[0]:
        ob, ib = dev.m.avgpool_bands(F32(S))
        nz = S != 0
        for r in range(S.shape[0]):
            cols = np.flatnonzero(nz[r])
            assert (ob[r, 0], ob[r, 1]) == (cols.min(), cols.max() + 1)
        for c in range(S.shape[1]):
            rows = np.flatnonzero(nz[:, c])
            assert (ib[c, 0], ib[c, 1]) == (rows.min(), rows.max() + 1)


# ===================================================================================
# elementwise
# ===================================================================================
COUNTS = [1, 37, 1031]


@pytest.mark.parametrize("count", COUNTS)
def test_stabilize_add_scale_fill(dev, count):
    rng = np.random.default_rng(count)
    z = rnd(rng, count, zeros=0.2)
    z[0] = -0.0
    eps = 1e-3
    s = dev.poisoned(count)
    dev.m.stabilize(dev.put(z), s, count, eps)
    want_s = z + np.where(z >= 0, F32(eps), F32(-eps))  # the CPU backend's _stab
    np.testing.assert_array_equal(dev.get(s, count), want_s)  # one IEEE add: exact everywhere
    np.testing.assert_array_equal(dev.get(s, count), F32(stabilize(z.astype(np.float64), eps)))

    x, y = rnd(rng, count), rnd(rng, count)
    py = dev.put(y)
    dev.m.add_inplace(py, dev.put(x), count)
    np.testing.assert_array_equal(dev.get(py, count), y + x)

    R, sd = rnd(rng, count), want_s
    r = dev.poisoned(count)
    dev.m.add_relevance(dev.put(x), dev.put(R), dev.put(sd), r, count)
    np.testing.assert_array_equal(dev.get(r, count), x * (R / sd))

    out = dev.poisoned(count)
    dev.m.scale(dev.put(x), out, count, 0.3)
    np.testing.assert_array_equal(dev.get(out, count), x * F32(0.3))
    px = dev.put(x)
    dev.m.scale(px, px, count, -2.5)  # in place
    np.testing.assert_array_equal(dev.get(px, count), x * F32(-2.5))

    f = dev.poisoned(count + 3)
    dev.m.fill(f, 1.25, count)
    got = dev.get(f, count + 3)
    np.testing.assert_array_equal(got[:count], np.full(count, 1.25, F32))
    assert np.isnan(got[count:]).all()  # nothing past count


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_concat_copy_and_slice(dev, axis):
    rng = np.random.default_rng(axis)
    base = (2, 3, 5, 7)
    parts = [rnd(rng, *[k if i == axis else s for i, s in enumerate(base)]) for k in (3, 4, 1)]
    want = np.concatenate(parts, axis=axis)
    n = int(np.prod(want.shape[:axis]))
    inner = int(np.prod(want.shape[axis + 1:]))
    dst_row = want.shape[axis] * inner
    dst = dev.poisoned(want.shape)
    off = 0
    for p in parts:
        cpr = p.shape[axis] * inner
        dev.m.copy_block(dev.put(p), dst, n, cpr, dst_row, off, cpr)
        off += cpr
    got = dev.get(dst, want.shape)
    np.testing.assert_array_equal(got, want)
    # the inverse: split a relevance tensor back into the parts
    R = rnd(rng, *want.shape)
    pR = dev.put(R)
    wants = np.split(R, np.cumsum([p.shape[axis] for p in parts])[:-1], axis=axis)
    off = 0
    for p, w in zip(parts, wants):
        cpr = p.shape[axis] * inner
        out = dev.poisoned(p.shape)
        dev.m.slice_block(pR, out, n, dst_row, cpr, off, cpr)
        np.testing.assert_array_equal(dev.get(out, p.shape), w)
        off += cpr


PERMUTE_CASES = [
    ((2, 3, 4), (0, 2, 1)),
    ((2, 3, 4, 5), (0, 2, 3, 1)),  # NCHW -> NHWC
    ((2, 5, 4, 3), (0, 3, 1, 2)),  # NHWC -> NCHW
    ((3, 1, 4, 1, 5, 2), (5, 3, 1, 0, 4, 2)),  # size-1 dims
    ((2, 3, 2, 3, 2, 3), (5, 4, 3, 2, 1, 0)),  # six dims, nothing merges
    ((2, 3, 4, 5, 6, 2, 3), (0, 1, 3, 2, 4, 6, 5)),  # seven dims that merge to five
    ((7,), (0,)),
    ((1, 1, 1), (2, 0, 1)),
    ((4, 0, 3), (2, 1, 0)),  # empty
]


@pytest.mark.parametrize("shape,perm", PERMUTE_CASES)
def test_permute(dev, shape, perm):
    rng = np.random.default_rng(len(shape))
    x = rnd(rng, *shape)
    want = np.ascontiguousarray(x.transpose(perm))
    out = dev.poisoned(want.shape)
    dev.m.permute(dev.put(x), out, list(shape), list(perm))
    np.testing.assert_array_equal(dev.get(out, want.shape), want)


def test_permute_too_many_dims(dev):
    shape, perm = (2,) * 8, (7, 5, 3, 1, 6, 4, 2, 0)
    x = dev.put(np.zeros(shape, F32))
    with pytest.raises(ValueError, match="permute"):
        dev.m.permute(x, dev.poisoned(shape), list(shape), list(perm))


ACT_CASES = [
    ("relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("leaky_relu", {}), ("elu", {"alpha": 0.7}),
    ("elu", {}), ("tanh", {}), ("sigmoid", {}), ("gelu", {}), ("silu", {}), ("softplus", {}), ("identity", {}),
]
ACT_PARAM = {"leaky_relu": ("negative_slope", 0.01), "elu": ("alpha", 1.0)}


def test_activation_numbering(dev):
    """The device kinds, numbered in the registry's order (fastlrp.ops.elementwise.ACTIVATIONS)."""
    names = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu", "silu", "softplus")
    assert dict(dev.m.ACTIVATIONS) == {n: i for i, n in enumerate(names)}


@pytest.mark.parametrize("name,attrs", ACT_CASES)
def test_activation_matches_reference(dev, name, attrs):
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal(1031) * 4).astype(F32)
    x[:10] = [0.0, -0.0, 30.0, -30.0, 90.0, -90.0, 1e-6, -1e-6, 8.0, -8.0]
    want = activation_function(name)(x.astype(np.float64), attrs)
    param = attrs.get(*ACT_PARAM[name]) if name in ACT_PARAM else 0.0
    y = dev.poisoned(x.size)
    dev.m.activation_forward(name, dev.put(x), y, x.size, param)
    got = dev.get(y, x.size)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    # kinds by number; NaN in -> NaN out
    xn = np.array([np.nan, 1.0, -1.0], F32)
    yn = dev.poisoned(3)
    dev.m.activation_forward(dev.m.ACTIVATIONS[name], dev.put(xn), yn, 3, param)
    got = dev.get(yn, 3)
    assert np.isnan(got[0]) and np.isfinite(got[1:]).all()


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 37), (3, 1000), (2, 300)])
def test_softmax_and_log_softmax(dev, rows, cols):
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((rows, cols)) * 5).astype(F32)
    x64 = x.astype(np.float64)
    sm = activation_function("softmax")(x64, {})
    for fn, want in (("softmax", sm), ("log_softmax", np.log(sm))):
        y = dev.poisoned((rows, cols))
        getattr(dev.m, fn)(dev.put(x), y, rows, cols)
        got = dev.get(y, (rows, cols))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("n,c,inner", [(2, 3, 1), (3, 5, 49), (1, 1, 7)])
def test_batchnorm(dev, n, c, inner):
    rng = np.random.default_rng(n * c * inner)
    x = rnd(rng, n, c, inner)
    s, t = rnd(rng, c), rnd(rng, c)
    y = dev.poisoned(x.shape)
    dev.m.batchnorm_forward(dev.put(x), y, dev.put(s), dev.put(t), n, c, inner)
    dev.same(dev.get(y, x.shape), x * s[:, None] + t[:, None])


# ===================================================================================
# reductions with a host result
# ===================================================================================
@pytest.mark.parametrize("count", [1, 2, 255, 257, 5000, 100003])
def test_min_value(dev, count):
    rng = np.random.default_rng(count)
    x = rnd(rng, count) + 3.0
    px = dev.put(x)
    assert dev.m.min_value(px, count) == float(x.min())
    x[count // 2] = -7.5
    assert dev.m.min_value(dev.put(x), count) == -7.5
    x[-1] = np.nan
    assert np.isnan(dev.m.min_value(dev.put(x), count))


def test_min_value_empty(dev):
    assert dev.m.min_value(0, 0) == float("inf")


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 13), (40, 301)])
def test_nonfinite_rows(dev, rows, cols):
    rng = np.random.default_rng(rows)
    x = rnd(rng, rows, cols)
    bad = rng.random(rows) < 0.4
    for r in np.flatnonzero(bad):
        x[r, rng.integers(cols)] = [np.nan, np.inf, -np.inf][r % 3]
    got = dev.m.nonfinite_rows(dev.put(x), rows, cols)
    assert got.dtype == np.bool_ and got.shape == (rows,)
    np.testing.assert_array_equal(got, ~np.isfinite(x).all(axis=1))


# ===================================================================================
# argument checking
# ===================================================================================
def test_bad_arguments_raise_value_error_naming_the_function(dev):
    m = dev.m
    p = dev.poisoned(64)
    ip = dev.poisoned(64, np.int32)
    bad = {
        "rule_g": lambda: m.rule_g(9, p, p, p, 0, p, p, n=1, O=2, P=3, groups=1, eps=1e-6),
        "rule_g ": lambda: m.rule_g(0, p, p, 0, 0, 0, p, n=1, O=3, P=3, groups=2, eps=1e-6),
        "maxpool_forward": lambda: m.maxpool_forward(p, p, ip, planes=1, h=4, w=4, kh=0, kw=2, sh=2, sw=2, ph=0,
                                                     pw=0, dh=1, dw=1, oh=2, ow=2),
        "maxpool_backward": lambda: m.maxpool_backward(p, ip, p, planes=-1, in_size=4, out_size=1),
        "avgpool_forward": lambda: m.avgpool_forward(p, p, 0, p, ip, ip, ip, ip, planes=1, h=2, w=2, oh=1, ow=1),
        "avgpool_relevance": lambda: m.avgpool_relevance(p, p, 0, p, p, p, ip, ip, ip, ip, planes=3, h=2, w=2, oh=1,
                                                         ow=1, channels=2, den_per_sample=False),
        "stabilize": lambda: m.stabilize(p, 0, 4, 1e-6),
        "add_inplace": lambda: m.add_inplace(p, p, -1),
        "add_relevance": lambda: m.add_relevance(p, p, 0, p, 3),
        "scale": lambda: m.scale(0, p, 3, 1.0),
        "fill": lambda: m.fill(0, 1.0, 3),
        "copy_block": lambda: m.copy_block(p, p, 2, 4, 6, 3, 4),
        "slice_block": lambda: m.slice_block(p, p, 2, 6, 4, 3, 4),
        "permute": lambda: m.permute(p, p, [2, 3], [0, 0]),
        "activation_forward": lambda: m.activation_forward("swish", p, p, 3),
        "softmax": lambda: m.softmax(p, 0, 2, 3),
        "log_softmax": lambda: m.log_softmax(p, p, -2, 3),
        "batchnorm_forward": lambda: m.batchnorm_forward(p, p, 0, p, 1, 2, 3),
        "min_value": lambda: m.min_value(0, 5),
        "nonfinite_rows": lambda: m.nonfinite_rows(p, -1, 3),
    }
    for name, call in bad.items():
        with pytest.raises(ValueError, match=name.strip()):
            call()
    # size 0 never touches the pointers
    m.stabilize(0, 0, 0, 1e-6)
    m.rule_g(0, 0, 0, 0, 0, 0, 0, n=0, O=4, P=3, groups=2, eps=1e-6)
    assert m.nonfinite_rows(0, 0, 5).shape == (0,)
