"""The CPU backend's bfloat16 mode (precision="bf16": its AMX-BF16 and AVX512_BF16
kernels, each where this CPU runs it) against float32.

1. GEMM GFLOP/s of the packed core (weights packed once, as per Explainer): ViT-B/16
   token products (197 tokens x batch 16 = 3152 columns) and VGG-16 conv layers
   (implicit im2col, 3x3, pad 1) at batch 16 on 224 / 4^i images.
2. explain samples/s of the bench models (bench/models.py) at their bench batch
   sizes, float32 vs bf16, and the heatmap agreement of each with the float64
   reference on two samples (per-sample correlation, top-10% overlap; the
   measured floors are tests/test_bf16.py's, the documented values docs/precision.md's).

    python bench/bench_bf16.py                 # everything
    python bench/bench_bf16.py --no-explain    # GEMMs only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

# (name, rows M, K, columns N) of  y = A @ B
VIT_SHAPES = [("vit qkv", 2304, 768, 3152), ("vit proj", 768, 768, 3152), ("vit fc1", 3072, 768, 3152),
              ("vit fc2", 768, 3072, 3152)]
# (name, batch, C in, C out, H = W)
VGG_SHAPES = [("vgg conv 64->128 @112", 16, 64, 128, 112), ("vgg conv 128->256 @56", 16, 128, 256, 56),
              ("vgg conv 256->512 @28", 16, 256, 512, 28), ("vgg conv 512->512 @14", 16, 512, 512, 14)]


def best_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def packer(core, mode):
    """pack_weights for a mode: "float32", or a bf16 kernel's name."""
    def pack(A):
        if mode == "float32":
            return core.pack_weights(A, 1)
        core.set_bf16_kernel(mode)
        return core.pack_weights(A, 1, "bf16")
    return pack


def bench_gemms(core, modes, repeats):
    rng = np.random.default_rng(0)
    print(f"{'GFLOP/s':<24} {'M x K x N':>20} " + " ".join(f"{p:>12}" for p in modes))
    for name, m, k, n in VIT_SHAPES:
        A = rng.standard_normal((m, k)).astype(np.float32)
        B = rng.standard_normal((k, n)).astype(np.float32)
        rates = []
        for p in modes:
            P = packer(core, p)(A)
            rates.append(2 * m * k * n / best_time(lambda P=P, B=B: core.gemm_packed(P, B), repeats) / 1e9)
        print(f"{name:<24} {f'{m} x {k} x {n}':>20} " + " ".join(f"{r:>12.0f}" for r in rates))
    for name, nb, c, o, hw in VGG_SHAPES:
        x = rng.standard_normal((nb, c, hw, hw)).astype(np.float32)
        W = (rng.standard_normal((o, c * 9)) / np.sqrt(9 * c)).astype(np.float32)
        rates = []
        for p in modes:
            P = packer(core, p)(W)
            t = best_time(lambda x=x, P=P, hw=hw: core.conv_gemm(x, P, (3, 3), (1, 1), (1, 1), (1, 1), (hw, hw)),
                          repeats)
            rates.append(2 * o * c * 9 * nb * hw * hw / t / 1e9)
        print(f"{name:<24} {f'{o} x {c * 9} x {nb * hw * hw}':>20} " + " ".join(f"{r:>12.0f}" for r in rates))


def bench_explain(core, models, composite, modes, repeats):
    import torch

    import fastlrp
    from models import build
    from test_bf16 import heatmap_agreement

    rng = np.random.default_rng(0)
    print(f"\n{'model':<10} {'batch':>5} {'precision':<11} {'samples/s':>10} {'corr min':>9} {'top10% min':>10}"
          f"   ({composite})")
    for mname, batch in models:
        model, shape = build(mname)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fastlrp.from_torch(model, torch.zeros((1, *shape)))
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        want = fastlrp.Explainer(graph, composite, backend="reference").explain(x[:2].astype(np.float64))
        for p in modes:
            if p != "float32":
                core.set_bf16_kernel(p)
            ex = fastlrp.Explainer(graph, composite, backend="cpu", precision="float32" if p == "float32" else "bf16")
            with np.errstate(invalid="ignore"):  # nan: a constant map (Flat on an MLP's first layer)
                corr, top = heatmap_agreement(ex.explain(x[:2]), want)
            ex.explain(x)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                ex.explain(x)
                ts.append(time.perf_counter() - t)
            print(f"{mname:<10} {batch:>5} {p:<11} {batch / statistics.median(ts):>10.1f} {corr.min():>9.4f} "
                  f"{top.min():>10.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-explain", action="store_true")
    ap.add_argument("--models", nargs="+", default=["vgg16:16", "mlp:256"], help="model:batch of bench/models.py")
    ap.add_argument("--composite", default="epsilon_plus_flat")
    args = ap.parse_args(argv)

    import fastlrp
    from fastlrp import _ext

    core = _ext.core
    if core is None:
        raise SystemExit(f"fastlrp._core is not built: {_ext.core_error}")
    why = core.bf16_unavailable()
    modes = ["float32"] + [k for k in ("amx_bf16", "avx512_bf16") if core.set_bf16_kernel(k)]
    core.set_bf16_kernel("")
    if why:
        print(f"# bf16 unavailable here ({why}): float32 only")
    fastlrp.set_num_threads(args.threads)
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    print(f"# {cpu}, {args.threads} threads, GEMM kernel {core.gemm_info()['active']}; best of {args.repeats}")
    bench_gemms(core, modes, args.repeats)
    if not args.no_explain:
        models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models]
        bench_explain(core, models, args.composite, modes, args.repeats)


if __name__ == "__main__":
    main()
