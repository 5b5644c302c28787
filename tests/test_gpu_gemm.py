"""The GPU implicit-GEMM conv kernel (``conv_gemm`` of fastlrp._cuda / _cuda_emu).

Forward mode against the CPU core's ``conv_gemm`` (same semantics, packed A),
transposed (backward) mode against a float64 NumPy transposed convolution; the
epilogues, ``accumulate`` and ``split`` are applied to those in float64.  Every
tile configuration (direct, 128x128, 128x64, 64x128, 64x64) runs on problems
smaller than one tile and on problems spanning several tiles, with odd sizes,
strides 1-3, asymmetric padding, dilation, groups and depthwise convs.

Output buffers are filled with NaN before each call (except with accumulate,
where they hold random prior values), so an element the kernel fails to write
shows up.  Tolerance: max|got - ref| <= RTOL * max|ref| with RTOL = 1e-5 (float32
sums of at most a few hundred products).

The emulated module (fastlrp._cuda_emu, the kernels on the CPU SIMT emulator) is
required; the same tests run on fastlrp._cuda, marked ``gpu``, when a device is
available.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace

import numpy as np
import pytest

pytest.importorskip("fastlrp._cuda_emu")
core = pytest.importorskip("fastlrp._core")
if not hasattr(core, "conv_gemm"):  # pragma: no cover
    pytest.skip("fastlrp._core without the GEMM core", allow_module_level=True)

RTOL = 1e-5
MULABS = dict(core.epilogues)["mulabs"]  # v * |mul|
TILES = {0: "direct", 1: "128x128", 2: "128x64", 3: "64x128", 4: "64x64"}


@pytest.fixture(
    scope="module",
    params=["emu", pytest.param("cuda", marks=pytest.mark.gpu)],
)
def mod(request):
    if request.param == "emu":
        return importlib.import_module("fastlrp._cuda_emu")
    cuda = pytest.importorskip("fastlrp._cuda")
    if not cuda.available():
        pytest.skip("no CUDA device")
    if not hasattr(cuda, "conv_gemm"):
        pytest.skip("fastlrp._cuda built without conv_gemm")
    return cuda


class Dev:
    """Device buffers of one test, freed at the end."""

    def __init__(self, mod):
        self.mod, self.ptrs = mod, []

    def put(self, a) -> int:
        a = np.ascontiguousarray(a, np.float32)
        p = self.mod.malloc(max(a.nbytes, 4))
        self.ptrs.append(p)
        self.mod.memcpy_htod(p, a)
        return p

    def get(self, p: int, shape) -> np.ndarray:
        out = np.empty(shape, np.float32)
        self.mod.memcpy_dtoh(out, p)
        return out

    def free(self):
        for p in self.ptrs:
            self.mod.free(p)
        self.ptrs = []


@pytest.fixture
def dev(mod):
    d = Dev(mod)
    yield d
    d.free()


@dataclass(frozen=True)
class Conv:
    """A conv: x (n, c, h, w), groups, m output rows per group, kernel, stride,
    padding (top, bottom, left, right), dilation.  Transposed mode: (h, w) is the
    size of the y side (the forward conv's input), the image x is its output."""

    n: int
    c: int
    h: int
    w: int
    groups: int
    m: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    pad: tuple = (0, 0, 0, 0)
    dh: int = 1
    dw: int = 1

    def out_hw(self):
        pt, pb, pl, pr = self.pad
        oh = (self.h + pt + pb - self.dh * (self.kh - 1) - 1) // self.sh + 1
        ow = (self.w + pl + pr - self.dw * (self.kw - 1) - 1) // self.sw + 1
        return oh, ow

    def label(self):
        return (f"n{self.n}c{self.c}_{self.h}x{self.w}g{self.groups}m{self.m}k{self.kh}x{self.kw}"
                f"s{self.sh}{self.sw}p{''.join(map(str, self.pad))}d{self.dh}{self.dw}")


def tiles_for(m):
    return [-1, 1, 2, 3, 4] + ([0] if m <= 8 else [])


def transposed_ref(x, A, cv: Conv, oh, ow):
    """y[n, g*M + ci, yy, xx] = sum A[g*M+ci, (oi,ky,kx)] x[n, g*cg+oi, (yy+ph-ky dh)/sh, (xx+pw-kx dw)/sw]
    over exact in-range quotients, in float64, as a scatter over x's pixels and the taps."""
    N, C, H, W = x.shape
    G, M = cv.groups, cv.m
    cg = C // G
    ph, pw = cv.pad[0], cv.pad[2]
    x64, A64 = x.astype(np.float64), A.astype(np.float64).reshape(G, M, cg, cv.kh, cv.kw)
    y = np.zeros((N, G, M, oh, ow))
    for g in range(G):
        xg = x64[:, g * cg:(g + 1) * cg]
        for ky in range(cv.kh):
            for kx in range(cv.kw):
                contrib = np.einsum("mo,noyx->nmyx", A64[g, :, :, ky, kx], xg)
                for iy in range(H):
                    yy = iy * cv.sh - ph + ky * cv.dh
                    if not 0 <= yy < oh:
                        continue
                    for ix in range(W):
                        xx = ix * cv.sw - pw + kx * cv.dw
                        if 0 <= xx < ow:
                            y[:, g, :, yy, xx] += contrib[:, :, iy, ix]
    return y.reshape(N, G * M, oh, ow)


def finish(raw, epi, bias, mul, off, split, prior, prior2):
    """The epilogue / split / accumulate of the kernel, applied in float64 to raw (n, O, oh, ow)."""
    raw = np.asarray(raw, np.float64)
    main, second = (raw[:, :split], raw[:, split:]) if split else (raw, None)
    if epi == 1:
        main = main + bias.astype(np.float64)[None, :, None, None]
    elif epi >= 2:
        q = mul.astype(np.float64)
        if epi == 3:
            q = np.maximum(q, 0)
        elif epi == 4:
            q = np.minimum(q, 0)
        elif epi == 5:
            q = q - off.astype(np.float64)[None]
        elif epi == MULABS:
            q = np.abs(q)
        main = main * q
    if prior is not None:
        main = main + prior
        if second is not None:
            second = second + prior2
    return main, second


def rel_err(got, want):
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "unwritten (NaN) or non-finite outputs"
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def run(mod, dev, rng, cv: Conv, *, sign=0, transposed=False, epi=0, accumulate=False, split=0, tile=-1):
    """Runs one conv_gemm on fresh random data; returns (got, ref, got2, ref2, tile used)."""
    G, M = cv.groups, cv.m
    cg = cv.c // G
    if transposed:
        H, W = cv.out_hw()  # the image x is the forward conv's output
        oh, ow = cv.h, cv.w
        K = cg * cv.kh * cv.kw
    else:
        H, W = cv.h, cv.w
        oh, ow = cv.out_hw()
        K = cg * cv.kh * cv.kw * (2 if sign == 1 else 1)
    O = G * M
    x = rng.standard_normal((cv.n, cv.c, H, W)).astype(np.float32)
    A = rng.standard_normal((O, K)).astype(np.float32)
    ych = split if split else O
    yshape, y2shape = (cv.n, ych, oh, ow), (cv.n, O - split, oh, ow)
    bias = rng.standard_normal(ych).astype(np.float32)
    mul = rng.standard_normal(yshape).astype(np.float32)
    off = rng.standard_normal(yshape[1:]).astype(np.float32)
    prior = rng.standard_normal(yshape).astype(np.float32) if accumulate else np.full(yshape, np.nan, np.float32)
    prior2 = rng.standard_normal(y2shape).astype(np.float32) if accumulate else np.full(y2shape, np.nan, np.float32)

    if transposed:
        raw = transposed_ref(x, A, cv, oh, ow)
    else:
        pt, pl = cv.pad[0], cv.pad[2]
        raw = core.conv_gemm(x, core.pack_weights(A, G), (cv.kh, cv.kw), (cv.sh, cv.sw), (pt, pl), (cv.dh, cv.dw),
                             (oh, ow), sign, 0, None, None, None, 0)
    ref, ref2 = finish(raw, epi, bias, mul, off, split, prior if accumulate else None,
                       prior2 if accumulate else None)

    px, pA, py = dev.put(x), dev.put(A), dev.put(prior)
    py2 = dev.put(prior2) if split else 0
    used = mod.conv_gemm(
        px, pA, py, n=cv.n, c=cv.c, h=H, w=W, groups=G, m=M, kh=cv.kh, kw=cv.kw, sh=cv.sh, sw=cv.sw,
        ph=cv.pad[0], pw=cv.pad[2], dh=cv.dh, dw=cv.dw, oh=oh, ow=ow, sign=sign, transposed=transposed, epi=epi,
        bias=dev.put(bias) if epi == 1 else 0, mul=dev.put(mul) if epi >= 2 else 0,
        off=dev.put(off) if epi == 5 else 0, accumulate=accumulate, y2=py2, split=split, tile=tile)
    mod.synchronize()
    got = dev.get(py, yshape)
    got2 = dev.get(py2, y2shape) if split else None
    if tile >= 0:
        assert used == tile
    return got, ref, got2, ref2, used


# Forward geometries: odd and prime sizes, 1s, strides 1-3, asymmetric padding,
# dilation 2, groups 1/2/4, depthwise, kernels 1x1 / 3x3 / 5x5 / 1xk, dense.
FWD = [
    Conv(1, 1, 1, 1, 1, 9),                                         # K = 1, one column
    Conv(5, 37, 1, 1, 1, 13),                                       # dense layer (1x1 images)
    Conv(3, 29, 1, 1, 1, 1),                                        # dense, one output row
    Conv(2, 3, 7, 5, 1, 17, 3, 3, pad=(1, 1, 1, 1)),
    Conv(2, 5, 11, 13, 1, 11, 3, 3, 2, 2, pad=(0, 2, 1, 0)),
    Conv(1, 4, 13, 11, 2, 19, 5, 5, 3, 3, pad=(2, 1, 1, 2)),
    Conv(2, 8, 9, 7, 4, 3, 3, 3, pad=(2, 2, 2, 2), dh=2, dw=2),
    Conv(2, 6, 8, 9, 6, 1, 3, 3, 2, 2, pad=(1, 1, 1, 1)),           # depthwise
    Conv(1, 5, 7, 7, 5, 2, 3, 3, pad=(1, 0, 0, 1)),                 # depthwise, multiplier 2
    Conv(2, 7, 1, 23, 1, 10, 1, 5, 1, 2, pad=(0, 0, 2, 1), dw=2),   # 1-d conv
    Conv(3, 2, 5, 3, 1, 70, 1, 1),                                  # 1x1 conv
]


@pytest.mark.parametrize("cv", FWD, ids=Conv.label)
@pytest.mark.parametrize("sign", [0, 1, 2])
def test_forward_matches_cpu(mod, dev, cv, sign):
    rng = np.random.default_rng(abs(hash((cv, sign))) % 2**32)
    for tile in tiles_for(cv.m):
        got, ref, _, _, used = run(mod, dev, rng, cv, sign=sign, tile=tile)
        assert rel_err(got, ref) <= RTOL, (cv, sign, TILES[used])


def test_forward_several_tiles(mod, dev):
    """M = 130, n*oh*ow = 300, K = 200: several tiles of every configuration along M, N and K."""
    rng = np.random.default_rng(1)
    cv = Conv(3, 8, 10, 10, 1, 130, 5, 5, pad=(2, 2, 2, 2))
    for tile in (-1, 1, 2, 3, 4):
        got, ref, _, _, used = run(mod, dev, rng, cv, tile=tile)
        assert rel_err(got, ref) <= RTOL, TILES[used]
    got, ref, _, _, _ = run(mod, dev, rng, replace(cv, c=4), sign=1, tile=1)
    assert rel_err(got, ref) <= RTOL


# Transposed geometries (the backward pass of the conv (h, w) -> out_hw()).
TRANS = [
    Conv(1, 1, 1, 1, 1, 9),
    Conv(4, 31, 1, 1, 1, 11),                                       # dense backward
    Conv(2, 3, 7, 5, 1, 17, 3, 3, pad=(1, 1, 1, 1)),
    Conv(2, 5, 11, 13, 1, 11, 3, 3, 2, 2, pad=(0, 2, 1, 0)),
    Conv(1, 4, 13, 11, 2, 19, 5, 5, 3, 3, pad=(2, 1, 1, 2)),
    Conv(2, 6, 10, 9, 1, 13, 3, 3, 2, 3, pad=(1, 0, 2, 1), dh=2, dw=2),
    Conv(2, 8, 9, 7, 4, 3, 3, 3, pad=(2, 2, 2, 2), dh=2, dw=2),
    Conv(2, 6, 8, 9, 6, 1, 3, 3, 2, 2, pad=(1, 1, 1, 1)),           # depthwise
    Conv(2, 10, 9, 8, 2, 12, 1, 1, 2, 2),                           # 1x1 stride 2: phases with no taps
    Conv(1, 3, 12, 12, 1, 9, 2, 2, 2, 2),                           # kernel = stride (patchify)
    Conv(2, 7, 1, 23, 1, 10, 1, 5, 1, 3, pad=(0, 0, 2, 1), dw=2),   # 1-d conv
]


@pytest.mark.parametrize("cv", TRANS, ids=Conv.label)
def test_transposed_matches_numpy(mod, dev, cv):
    rng = np.random.default_rng(abs(hash(cv)) % 2**32)
    for tile in tiles_for(cv.m):
        got, ref, _, _, used = run(mod, dev, rng, cv, transposed=True, tile=tile)
        assert rel_err(got, ref) <= RTOL, (cv, TILES[used])


def test_transposed_several_tiles(mod, dev):
    rng = np.random.default_rng(2)
    cv = Conv(3, 20, 11, 12, 1, 130, 3, 3, 2, 2, pad=(1, 1, 1, 1))  # y: 3 x 130 x 11 x 12, K <= 180
    for tile in (-1, 1, 2, 3, 4):
        got, ref, _, _, used = run(mod, dev, rng, cv, transposed=True, tile=tile)
        assert rel_err(got, ref) <= RTOL, TILES[used]


def test_transposed_is_the_adjoint_of_forward(mod, dev):
    """<conv(u), v> = <u, conv^T(v)> with A of the transposed call = the forward weights transposed per group."""
    rng = np.random.default_rng(3)
    N, Ci, H, W, G, Og, KH, KW, s, p, d = 2, 6, 9, 10, 2, 4, 3, 3, (2, 3), (1, 2), (2, 1)
    cg = Ci // G
    oh = (H + 2 * p[0] - d[0] * (KH - 1) - 1) // s[0] + 1
    ow = (W + 2 * p[1] - d[1] * (KW - 1) - 1) // s[1] + 1
    Wt = rng.standard_normal((G * Og, cg, KH, KW)).astype(np.float32)
    u = rng.standard_normal((N, Ci, H, W)).astype(np.float32)
    v = rng.standard_normal((N, G * Og, oh, ow)).astype(np.float32)
    fwd = core.conv_gemm(u, core.pack_weights(Wt.reshape(G * Og, -1), G), (KH, KW), s, p, d, (oh, ow), 0, 0,
                         None, None, None, 0)
    At = Wt.reshape(G, Og, cg, KH, KW).transpose(0, 2, 1, 3, 4).reshape(G * cg, Og * KH * KW)
    py = dev.put(np.full((N, Ci, H, W), np.nan, np.float32))
    mod.conv_gemm(dev.put(v), dev.put(At), py, n=N, c=G * Og, h=oh, w=ow, groups=G, m=cg, kh=KH, kw=KW,
                  sh=s[0], sw=s[1], ph=p[0], pw=p[1], dh=d[0], dw=d[1], oh=H, ow=W, transposed=True)
    back = dev.get(py, (N, Ci, H, W))
    lhs = float(np.sum(fwd.astype(np.float64) * v))
    rhs = float(np.sum(u.astype(np.float64) * back))
    assert abs(lhs - rhs) <= 1e-5 * max(abs(lhs), np.abs(fwd).sum())


EPI_CASES = [
    Conv(2, 6, 7, 6, 2, 21, 3, 3, 2, 1, pad=(1, 0, 1, 1)),
    Conv(2, 4, 6, 5, 4, 2, 3, 3, pad=(1, 1, 1, 1)),                # direct kernel
]


@pytest.mark.parametrize("cv", EPI_CASES, ids=Conv.label)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("epi", [0, 1, 2, 3, 4, 5, MULABS])
@pytest.mark.parametrize("accumulate", [False, True])
def test_epilogues(mod, dev, cv, transposed, epi, accumulate):
    rng = np.random.default_rng(abs(hash((cv, transposed, epi, accumulate))) % 2**32)
    for tile in (-1, 4):
        got, ref, _, _, used = run(mod, dev, rng, cv, sign=0 if transposed else 1, transposed=transposed, epi=epi,
                                   accumulate=accumulate, tile=tile)
        assert rel_err(got, ref) <= RTOL, TILES[used]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("epi", [0, 1, 3, 5])
@pytest.mark.parametrize("accumulate", [False, True])
def test_split(mod, dev, transposed, epi, accumulate):
    """Rows >= split go raw to y2, rows < split to y with the epilogue (as the CPU's [W; W+] forward)."""
    rng = np.random.default_rng(abs(hash((transposed, epi, accumulate))) % 2**32)
    cv = Conv(2, 5, 6, 7, 1, 26, 3, 3, pad=(1, 1, 0, 2))
    for tile, split in ((-1, 13), (4, 13), (1, 1), (2, 25), (3, 7)):
        got, ref, got2, ref2, used = run(mod, dev, rng, cv, transposed=transposed, epi=epi,
                                         accumulate=accumulate, split=split, tile=tile)
        assert rel_err(got, ref) <= RTOL, (TILES[used], split)
        assert rel_err(got2, ref2) <= RTOL, (TILES[used], split)
    cv = replace(cv, m=6)  # the direct kernel
    got, ref, got2, ref2, _ = run(mod, dev, rng, cv, transposed=transposed, epi=epi, accumulate=accumulate,
                                  split=2, tile=0)
    assert rel_err(got, ref) <= RTOL and rel_err(got2, ref2) <= RTOL


def test_split_matches_cpu_forward(mod, dev):
    """The CPU's own split ([W; W+] x -> (W x + b, W+ x)) against the GPU's."""
    rng = np.random.default_rng(4)
    N, C, H, W, O = 2, 5, 8, 7, 12
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Wt = rng.standard_normal((O, C * 9)).astype(np.float32)
    A = np.concatenate([Wt, np.maximum(Wt, 0)])
    b = rng.standard_normal(O).astype(np.float32)
    out, psum = core.conv_gemm(x, core.pack_weights(A, 1), (3, 3), (1, 1), (1, 1), (1, 1), (H, W), 0, 1, b, None,
                               None, O)
    py, py2 = dev.put(np.full(out.shape, np.nan)), dev.put(np.full(psum.shape, np.nan))
    mod.conv_gemm(dev.put(x), dev.put(A), py, n=N, c=C, h=H, w=W, groups=1, m=2 * O, kh=3, kw=3, sh=1, sw=1,
                  ph=1, pw=1, dh=1, dw=1, oh=H, ow=W, epi=1, bias=dev.put(b), y2=py2, split=O)
    assert rel_err(dev.get(py, out.shape), out) <= RTOL
    assert rel_err(dev.get(py2, psum.shape), psum) <= RTOL


def test_tile_choice(mod):
    base = dict(n=1, c=16, h=14, w=14, groups=1, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, oh=14, ow=14)
    # dry_run validates and reports without touching memory (null pointers are fine then)
    assert mod.conv_gemm(1, 1, 1, m=1, dry_run=True, **base) == 0  # small M: direct
    assert mod.conv_gemm(1, 1, 1, m=8, dry_run=True, **base) == 0
    assert mod.conv_gemm(1, 1, 1, m=9, dry_run=True, **base) in (1, 2, 3, 4)
    big = dict(base, n=64, c=64, h=56, w=56, oh=56, ow=56)
    assert mod.conv_gemm(1, 1, 1, m=256, dry_run=True, **big) == 1  # large problems: 128 x 128
    assert mod.conv_gemm(1, 1, 1, m=9, tile=3, dry_run=True, **base) == 3


def test_empty_batch_is_a_no_op(mod, dev):
    geo = dict(c=4, h=5, w=5, groups=1, m=16, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1)
    mod.conv_gemm(0, 0, 0, n=0, oh=5, ow=5, **geo)
    mod.conv_gemm(0, 0, 0, n=3, oh=0, ow=5, **geo)
    mod.conv_gemm(0, 0, 0, n=2, oh=5, ow=0, transposed=True, **geo)


def _good():
    return dict(n=1, c=4, h=5, w=5, groups=2, m=3, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, oh=5, ow=5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(c=5), "divisible"),
        (dict(c=0), "c must be"),
        (dict(h=0), "h must be"),
        (dict(m=0), "m must be"),
        (dict(groups=0), "groups must be"),
        (dict(kh=0), "kh must be"),
        (dict(sw=0), "sw must be"),
        (dict(dh=0), "dh must be"),
        (dict(n=-1), "n must be"),
        (dict(oh=-2), "oh must be"),
        (dict(sign=3), "sign"),
        (dict(sign=1, transposed=True), "transposed"),
        (dict(epi=len(core.epilogues)), "epi"),
        (dict(epi=1), "bias"),
        (dict(epi=2), "mul"),
        (dict(epi=5, mul=8), "off"),
        (dict(split=1, y2=8), "groups"),
        (dict(groups=1, c=4, split=3, y2=8), "split must be < m"),
        (dict(groups=1, split=1), "y2"),
        (dict(y2=8), "split"),
        (dict(split=-1), "split"),
        (dict(tile=0, m=9), "direct"),
        (dict(tile=7), "tile"),
    ],
)
def test_validation(mod, change, match):
    args = dict(_good(), **change)
    # dry_run: the same validation, and a missed error cannot launch on the fake pointers
    with pytest.raises(ValueError, match="conv_gemm") as e:
        mod.conv_gemm(8, 8, 8, dry_run=True, **args)
    assert match in str(e.value)


def test_null_pointers_rejected(mod):
    with pytest.raises(ValueError, match="conv_gemm: x, A and y"):
        mod.conv_gemm(0, 8, 8, **_good())


def test_launch_validates(mod, dev):
    y = dev.put(np.zeros(16))
    with pytest.raises(ValueError, match="conv_gemm: .*divisible"):
        mod.conv_gemm(y, y, y, **dict(_good(), c=5))
    with pytest.raises(ValueError, match="conv_gemm: epi 1 .*needs bias"):
        mod.conv_gemm(y, y, y, **dict(_good(), epi=1))
