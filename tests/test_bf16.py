"""The opt-in bfloat16 mode of the CPU backend (precision="bf16": AMX-BF16 tiles,
bfloat16 operands, float32 sums).

- The GEMM against a float64 GEMM of the bfloat16-ROUNDED operands: the only error
  left is the float32 accumulation, so the bound is the float32 path's
  (|y - y64| <= 1e-5 * max(|A| |B|)), with odd sizes, groups, the sign split,
  epilogues (applied in float32 to the float32 sums) and split outputs.
- Whole explanations against the float64 reference, as heatmap agreement: per-sample
  Pearson correlation and top-10% overlap, with floors; ``python tests/test_bf16.py``
  prints the measured values that docs/precision.md states.

Skipped with the reason where the kernel cannot run (no AMX-BF16 in the build, the
CPU or the OS); the error a user then gets is tested everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

_ext = pytest.importorskip("fastlrp._ext")
core = _ext.core
if core is None or not hasattr(core, "bf16_unavailable"):  # pragma: no cover
    pytest.skip(f"fastlrp._core (with the bfloat16 GEMM) not built: {_ext.core_error}", allow_module_level=True)

import fastlrp  # noqa: E402
from fastlrp.backends.base import BackendError  # noqa: E402
from fastlrp.backends.cpu import CpuBackend  # noqa: E402
from fastlrp.backends.reference import conv_forward  # noqa: E402
from fastlrp.graph import GraphBuilder  # noqa: E402
from _nets import attention_block  # noqa: E402

WHY = core.bf16_unavailable()
needs_bf16 = pytest.mark.skipif(bool(WHY), reason=f"bfloat16 GEMM unavailable: {WHY}")
#: The bf16 kernels this CPU runs (an AMX CPU runs both: AVX512_BF16 is tested there too).
KERNELS = [k for k in ("amx_bf16", "avx512_bf16") if core.set_bf16_kernel(k)]
core.set_bf16_kernel("")
kernels = pytest.mark.parametrize("kernel", KERNELS or [pytest.param("-", marks=needs_bf16)])


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    core.set_num_threads(0)
    core.set_bf16_kernel("")


def bf16(a) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float64."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def test_bf16_errors_name_what_is_missing():
    with pytest.raises(BackendError, match="precision='bf16' is offered by the compiled CPU backend only"):
        fastlrp.get_backend("numba", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        CpuBackend(precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        core.pack_weights(np.ones((2, 2), np.float32), 1, "fp8")
    with pytest.raises(BackendError, match="differs from the backend object"):
        fastlrp.get_backend(CpuBackend(), precision="bf16")
    if WHY:
        with pytest.raises(BackendError, match="precision='bf16' is unavailable: " + WHY[:20]):
            CpuBackend(precision="bf16")
        with pytest.raises(RuntimeError, match="bfloat16 GEMM unavailable"):
            core.pack_weights(np.ones((2, 2), np.float32), 1, "bf16")


def test_bf16_command_line(tmp_path, capsys):
    """``fastlrp explain --precision bf16``: runs where a bf16 kernel does, else fails
    with the reason; a backend without the mode is named."""
    from fastlrp import cli

    small_mlp(np.random.default_rng(0)).save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((3, 196)).astype(np.float32))
    args = ["explain", str(tmp_path / "m.npz"), str(tmp_path / "x.npy"), "-q", "-c", "epsilon_plus",
            "--precision", "bf16"]
    assert cli.main(args + ["-o", str(tmp_path / "r.zarr"), "--backend", "reference"]) == 1
    assert "offered by the compiled CPU backend only" in capsys.readouterr().err
    assert cli.main(args + ["-o", str(tmp_path / "c.zarr"), "--backend", "cpu"]) == (1 if WHY else 0)
    if WHY:
        assert WHY[:30] in capsys.readouterr().err


# ----------------------------------------------------------------------------- GEMM
@kernels
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 5), (31, 33, 63), (33, 31, 65), (61, 97, 777),
                                   (100, 3, 1000), (5, 1031, 37), (300, 70, 2100),
                                   (40, 700, 2100)])
def test_bf16_gemm_against_rounded_float64(kernel, m, n, k):
    assert core.set_bf16_kernel(kernel)
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    P = core.pack_weights(A, 1, "bf16")
    assert P.isa == kernel
    core.set_num_threads(1)
    C1 = core.gemm_packed(P, B)
    core.set_num_threads(2)
    C2 = core.gemm_packed(P, B)
    bound = (np.abs(A).astype(np.float64) @ np.abs(B)).max()
    assert np.abs(C1 - bf16(A) @ bf16(B)).max() <= 1e-5 * bound
    np.testing.assert_array_equal(C1, C2)  # one thread per output element, whatever the split
    # and it is a bfloat16 product: farther from the unrounded one (unless K is tiny)
    if k > 8:
        assert np.abs(C1 - A.astype(np.float64) @ B).max() > 1e-4 * bound


def _conv64(x, W, groups, stride, pad, dil, sign):
    """float64 conv GEMM of conv_gemm's definition on bf16-rounded operands (and the
    same product of the absolute values: the error bound's scale)."""
    O, K = W.shape
    Cg, halves = x.shape[1] // groups, 2 if sign == 1 else 1
    kk = int(round(np.sqrt(K // (halves * Cg))))
    Wh = W.reshape(O, halves, Cg, kk, kk)
    at = {"dims": 2, "stride": (stride,) * 2, "padding": ((pad, pad),) * 2, "dilation": (dil,) * 2,
          "groups": groups}
    parts = {0: [x], 1: [np.maximum(x, 0), np.minimum(x, 0)], 2: [np.abs(x)]}[sign]
    y = sum(conv_forward(bf16(xs), bf16(Wh[:, h]), None, at) for h, xs in enumerate(parts))
    scale = sum(conv_forward(np.abs(bf16(xs)), np.abs(bf16(Wh[:, h])), None, at) for h, xs in enumerate(parts))
    return y, scale.max()


@kernels
@pytest.mark.parametrize("C,O,G,k,stride,pad,dil,sign,epi", [
    (5, 37, 1, 3, 1, 1, 1, 0, "bias"), (6, 40, 2, 3, 2, 1, 1, 1, "none"), (8, 34, 2, 3, 1, 2, 2, 0, "mulx"),
    (3, 33, 1, 5, 2, 0, 1, 1, "mulxoff"), (36, 20, 1, 1, 1, 0, 1, 0, "mulpos"), (12, 51, 3, 3, 1, 1, 1, 1, "mulneg"),
    (7, 35, 1, 3, 2, 1, 1, 2, "mulabs")])
def test_bf16_conv_gemm_epilogues_groups_sign(kernel, C, O, G, k, stride, pad, dil, sign, epi):
    assert core.set_bf16_kernel(kernel)
    rng = np.random.default_rng(C * 100 + O)
    N, H, Wd = 2, 11, 9
    x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
    W = rng.standard_normal((O, (2 if sign == 1 else 1) * (C // G) * k * k)).astype(np.float32)
    out_hw = tuple((n + 2 * pad - dil * (k - 1) - 1) // stride + 1 for n in (H, Wd))
    b = rng.standard_normal(O).astype(np.float32)
    m = rng.standard_normal((N, O) + out_hw).astype(np.float32)
    off = rng.standard_normal((O,) + out_hw).astype(np.float32)
    A = core.pack_weights(W, G, "bf16")
    assert A.isa == kernel
    y = core.conv_gemm(x, A, (k, k), (stride, stride), (pad, pad), (dil, dil), out_hw, sign, core.epilogues[epi],
                       b if epi == "bias" else None, m if epi.startswith("mul") else None,
                       off if epi == "mulxoff" else None)
    z, scale = _conv64(x, W, G, stride, pad, dil, sign)
    m64 = m.astype(np.float64)
    mult = {"none": 1.0, "bias": 1.0, "mulx": m64, "mulpos": np.maximum(m64, 0), "mulneg": np.minimum(m64, 0),
            "mulxoff": m64 - off[None], "mulabs": np.abs(m64)}[epi]
    want = z * mult + (b[None, :, None, None] if epi == "bias" else 0.0)
    assert y.shape == want.shape
    assert np.abs(y - want).max() <= 1e-5 * scale * np.abs(mult).max()


@kernels
@pytest.mark.parametrize("S,C,O,sign", [(1, 5, 3, 0), (37, 300, 29, 0), (70, 33, 13, 1), (300, 700, 100, 1),
                                        (600, 64, 70, 0), (45, 130, 33, 2)])
def test_bf16_sample_rows(kernel, S, C, O, sign):
    """Weights packed with rows=True (a dense layer; AMX: tiles of samples x features, A
    tiles from x's rows converted to contiguous bfloat16 tiles; the other kernel keeps the conv layout), with
    the sign split or |x|, epilogues and a split output, against float64 of the rounded operands;
    a sample alone is bit for bit the same as inside the batch."""
    assert core.set_bf16_kernel(kernel)
    rng = np.random.default_rng(S + C + O)
    x = rng.standard_normal((S, C, 1, 1)).astype(np.float32)
    W = rng.standard_normal((O, (2 if sign == 1 else 1) * C)).astype(np.float32)
    A = core.pack_weights(W, 1, "bf16", rows=True)
    assert A.isa == kernel and A.rows == (kernel == "amx_bf16")
    x64 = x[:, :, 0, 0].astype(np.float64)
    xs = {0: x64, 1: np.concatenate([np.maximum(x64, 0), np.minimum(x64, 0)], 1), 2: np.abs(x64)}[sign]
    z, scale = bf16(xs) @ bf16(W).T, (np.abs(bf16(xs)) @ np.abs(bf16(W)).T).max()
    b = rng.standard_normal(O).astype(np.float32)
    m = rng.standard_normal((S, O, 1, 1)).astype(np.float32)
    args = ((1, 1), (1, 1), (0, 0), (1, 1), (1, 1), sign)
    y = core.conv_gemm(x, A, *args, core.epilogues["bias"], b, None, None)
    assert np.abs(y[:, :, 0, 0] - (z + b)).max() <= 1e-5 * scale
    y = core.conv_gemm(x, A, *args, core.epilogues["mulx"], None, m, None)
    assert np.abs(y[:, :, 0, 0] - z * m[:, :, 0, 0]).max() <= 1e-5 * scale * np.abs(m).max()
    sp = O // 2 + 1
    y, y2 = core.conv_gemm(x, A, *args, core.epilogues["bias"], b[:sp], None, None, sp)
    assert np.abs(y[:, :, 0, 0] - (z + b)[:, :sp]).max() <= 1e-5 * scale
    assert np.abs(y2[:, :, 0, 0] - z[:, sp:]).max() <= 1e-5 * scale
    one = core.conv_gemm(x[-1:], A, *args, core.epilogues["bias"], b, None, None)
    np.testing.assert_array_equal(one, core.conv_gemm(x, A, *args, core.epilogues["bias"], b, None, None)[-1:])


@kernels
@pytest.mark.parametrize("zero_bias", [False, True])
def test_bf16_fused_epsilon_quotient(kernel, zero_bias):
    """The fused Epsilon quotient on the AMX sample-rows driver: bit for bit rule_g's g
    through the same product (the other kernel has no sample-rows driver: refused)."""
    from test_cpu_kernels import _fused_quotient_case

    assert core.set_bf16_kernel(kernel)
    if kernel != "amx_bf16":
        with pytest.raises(ValueError, match="sample rows"):
            _fused_quotient_case(lambda W: core.pack_weights(W, 1, "bf16", rows=True), zero_bias)
        return
    _fused_quotient_case(lambda W: core.pack_weights(W, 1, "bf16", rows=True), zero_bias)


@kernels
def test_bf16_split_output_and_direct_path_stays_float32(kernel):
    assert core.set_bf16_kernel(kernel)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    W = rng.standard_normal((5, 27)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    A = core.pack_weights(np.concatenate([W, np.maximum(W, 0)]), 1, "bf16")
    y, p = core.conv_gemm(x, A, (3, 3), (1, 1), (1, 1), (1, 1), (6, 7), 0, core.epilogues["bias"], b, None, None, 5)
    zy, sy = _conv64(x, W, 1, 1, 1, 1, 0)
    zp, sp = _conv64(x, np.maximum(W, 0), 1, 1, 1, 1, 0)
    assert np.abs(y - (zy + b[None, :, None, None])).max() <= 1e-5 * sy
    assert np.abs(p - zp).max() <= 1e-5 * sp
    # a depthwise conv (few rows, short K per group) runs the float32 direct loops in either mode
    Wd = rng.standard_normal((3, 9)).astype(np.float32)
    Ad = core.pack_weights(Wd, 3, "bf16")
    assert Ad.isa not in ("amx_bf16", "avx512_bf16")
    yd = core.conv_gemm(x, Ad, (3, 3), (1, 1), (1, 1), (1, 1), (6, 7), 0, 0, None, None, None)
    at = {"dims": 2, "stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 3}
    want = conv_forward(x.astype(np.float64), Wd.reshape(3, 1, 3, 3).astype(np.float64), None, at)
    assert np.abs(yd - want).max() <= 1e-5 * np.abs(want).max()


# ----------------------------------------------------------------------------- explanations
def small_cnn(rng):
    gb = GraphBuilder((3, 16, 16))
    h, c = gb.input, 3
    for co in (16, "M", 32, "M"):
        if co == "M":
            h = gb.maxpool(h, 2)
            continue
        h = gb.conv(h, rng.standard_normal((co, c, 3, 3)) / np.sqrt(9 * c), 0.05 * rng.standard_normal(co),
                    padding=1)
        h, c = gb.activation(h, "relu"), co
    h = gb.activation(gb.dense(gb.flatten(h), rng.standard_normal((64, 32 * 16)) / np.sqrt(512),
                               0.05 * rng.standard_normal(64)), "relu")
    gb.dense(h, rng.standard_normal((10, 64)) / 8, 0.05 * rng.standard_normal(10))
    return gb.build()


def small_mlp(rng):
    gb = GraphBuilder((196,))
    h, c = gb.input, 196
    for co in (256, 128):
        h = gb.activation(gb.dense(h, rng.standard_normal((co, c)) / np.sqrt(c), 0.05 * rng.standard_normal(co)),
                          "relu")
        c = co
    gb.dense(h, rng.standard_normal((10, c)) / np.sqrt(c), 0.05 * rng.standard_normal(10))
    return gb.build()


def small_attention(rng):
    """A pre-norm attention block (17 tokens of 32, 4 heads): its matmuls run in bf16 too."""
    return attention_block(rng, T=17, D=32, H=4)


NETS = {"cnn": small_cnn, "mlp": small_mlp, "attention": small_attention}
#: The CNN with the Flat composites (Flat on the first conv, ZPlus or AlphaBeta(2, 1) on
#: the other convs, Epsilon on the dense layers); the MLP without Flat, whose first dense
#: layer would spread relevance evenly over the input (a constant heatmap): all Epsilon,
#: and all ZPlus (excitation_backprop).
CASES = [("cnn", "epsilon_plus_flat"), ("cnn", "epsilon_alpha2_beta1_flat"), ("mlp", "epsilon_plus"),
         ("mlp", "excitation_backprop"), ("attention", "cp_lrp"), ("attention", "attnlrp")]
#: Floors of the heatmap agreement over 16 samples (the measured values: docs/precision.md):
#: every sample's correlation and top-10% overlap, and the median correlation.
MIN_CORR, MIN_MEDIAN_CORR, MIN_TOPK = 0.9, 0.99, 0.8


def heatmap_agreement(got, want, frac=0.1):
    """Per sample: Pearson correlation of the relevance maps, and the overlap of their
    top ``frac`` entries by relevance (|top(got) & top(want)| / |top(want)|)."""
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    w = np.asarray(want, np.float64).reshape(len(want), -1)
    gc, wc = g - g.mean(1, keepdims=True), w - w.mean(1, keepdims=True)
    corr = (gc * wc).sum(1) / np.sqrt((gc * gc).sum(1) * (wc * wc).sum(1))
    t = max(1, int(round(frac * g.shape[1])))
    overlap = np.array([len(np.intersect1d(np.argsort(-a)[:t], np.argsort(-b)[:t])) / t for a, b in zip(g, w)])
    return corr, overlap


def measure(net, composite, n=16, seed=0):
    """(correlations, top-10% overlaps) of precision="bf16" against the float64 reference, per sample."""
    rng = np.random.default_rng(seed)
    graph = NETS[net](rng)
    x = rng.standard_normal((n,) + tuple(graph.input_shape)).astype(np.float32)
    got = fastlrp.Explainer(graph, composite, backend="cpu", precision="bf16").explain(x)
    want = fastlrp.Explainer(graph, composite, backend="reference").explain(x.astype(np.float64))
    return heatmap_agreement(got, want)


@kernels
@pytest.mark.parametrize("net,composite", CASES)
def test_bf16_heatmaps_agree_with_float64(kernel, net, composite):
    assert core.set_bf16_kernel(kernel)
    ex = fastlrp.Explainer(NETS[net](np.random.default_rng(0)), composite, backend="cpu", precision="bf16")
    assert ex.backend.precision == "bf16"
    corr, overlap = measure(net, composite)
    assert corr.min() > MIN_CORR and np.median(corr) > MIN_MEDIAN_CORR and overlap.min() > MIN_TOPK, (corr, overlap)
    # and the float32 path stays exact to its own tolerance on the same inputs
    corr32, _ = heatmap_agreement(*_float32_vs_reference(net, composite))
    assert corr32.min() > 1 - 1e-6


def _float32_vs_reference(net, composite, n=4):
    rng = np.random.default_rng(0)
    graph = NETS[net](rng)
    x = rng.standard_normal((n,) + tuple(graph.input_shape)).astype(np.float32)
    return (fastlrp.Explainer(graph, composite, backend="cpu").explain(x),
            fastlrp.Explainer(graph, composite, backend="reference").explain(x.astype(np.float64)))


if __name__ == "__main__":  # the table of docs/precision.md
    if WHY:
        raise SystemExit(f"bfloat16 GEMM unavailable: {WHY}")
    print("| kernel | net | composite | correlation min / median | top-10% overlap min / median |")
    print("|---|---|---|---|---|")
    for kernel in KERNELS:
        core.set_bf16_kernel(kernel)
        for net, composite in CASES:
            c, o = measure(net, composite)
            print(f"| {kernel} | {net} | {composite} | {c.min():.4f} / {np.median(c):.4f} "
                  f"| {o.min():.3f} / {np.median(o):.3f} |")
