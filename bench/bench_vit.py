"""Vision transformer bench: fastlrp against LXT 2.1 on the same torchvision ViT, inputs
and threads, in one process.

    python bench/bench_vit.py                                   # ViT-B/16, 224 x 224, batch 16
    python bench/bench_vit.py --model vit_b_16 --size 224 --batches 4 16 --repeats 2 --json out.json

Both sides compute the same rules, chosen with ``--rules`` (tests/lxt_vit.py):

``cp``        (default) CP-LRP (LXT's ``vit_torch.cp_LRP`` patches: GELU identity, LayerNorm
              with the std detached, attention weights held constant) with LRP-0 on every
              Linear/Conv (LXT without zennit rules); fastlrp ``cp_lrp(epsilon=1e-9)``.
``cp_gamma``  the same with zennit's Gamma(0.25) on nn.Linear and nn.Conv2d through LXT's
              ``monkey_patch_zennit`` (LXT's ViT example; the attention projections stay
              LRP-0 on both sides).
``attn``      AttnLRP's uniform rule on the attention matmuls (LXT's ``divide_gradient``).

fastlrp runs on the ``cpu`` backend, float32; LXT is Gradient x Input through torch
autograd, float32. The model has random weights
(torchvision's initialisation; the zero-initialised head re-initialised); the target is
each sample's arg-max class. The graph is imported before LXT patches torch.nn's classes;
the model's parameters do not require gradients on LXT's side (only the input's is needed).

``--bf16`` adds fastlrp's ``precision="bf16"`` (bfloat16 GEMM inputs, float32 sums; needs
AMX or AVX512_BF16) and LXT under ``torch.autocast("cpu", bfloat16)`` (not with ``cp_gamma``:
zennit's rule hooks then hand F.linear a bfloat16 input and float32 weights); their error is
against LXT in float32.

Per batch: one warm-up call of each method on the batch (which also gives peak memory and
the difference between the two relevances, max|R - R_lxt| / max|R_lxt|), then
``--repeats`` interleaved timed rounds; the median is reported. ``x limit``: the median
over the FLOP limit of bench_cpu.py (docs/design.md 3.1: the dense/conv GEMM work the
rules need at the float32 rate of torch's plain forward pass of the same model and batch,
measured in this run before LXT patches it; attention's activation products are not
counted, so the limit is optimistic), below 1 only past that rate (bf16).

Needs torchvision, lxt==2.1 and transformers==4.52.4 (LXT imports it), see tests/lxt_vit.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import lxt_vit  # noqa: E402
from bench_cpu import forward_flops, limit_flops, machine_info, measure_peak, torch_forward_rate  # noqa: E402

#: LRP-0 up to a stabilizer of 1e-9: with epsilon exactly 0, a float32 score q.k that rounds to
#: exactly 0 (a few among ViT-B/16's 10^8 per batch) divides 0 by 0
EPSILON = 1e-9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b_16", help="a torchvision ViT builder (vit_b_16, vit_b_32, ...)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", nargs="+", type=int, default=[16])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rules", default="cp", choices=lxt_vit.RULE_SETS,
                    help="the rule set of both sides (see above)")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    ap.add_argument("--bf16", action="store_true",
                    help="also fastlrp precision='bf16' and LXT under torch.autocast(bfloat16) (err vs LXT float32)")
    a = ap.parse_args(argv)

    import torch

    import fastlrp
    from _zoo import load_torchvision

    torch.set_num_threads(a.threads)
    fastlrp.set_num_threads(a.threads)
    tv = load_torchvision()
    torch.manual_seed(0)
    model = getattr(tv.models, a.model)(weights=None, image_size=a.size).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x0 = torch.randn(1, 3, a.size, a.size)
    t = time.perf_counter()
    graph = fastlrp.from_torch(model, x0)
    import_s = time.perf_counter() - t
    composite = lxt_vit.fastlrp_composite(a.rules, EPSILON)
    ex = fastlrp.Explainer(graph, composite, backend="cpu")
    ex16 = fastlrp.Explainer(graph, composite, backend="cpu", precision="bf16") if a.bf16 else None

    fwd_flops = forward_flops(graph)
    rates = {}  # torch's float32 forward GEMM rate per batch, before LXT's patches
    for n in a.batches:
        xr = np.random.default_rng(n).standard_normal((n, 3, a.size, a.size)).astype(np.float32)
        rates[n] = fwd_flops * n / torch_forward_rate(model, xr, max(a.repeats, 2))
    lxt_vit.patch_lxt(tv, a.rules)
    if a.rules == "cp_gamma":
        lxt_vit.register_zennit_gamma(model)
    model.requires_grad_(False)  # LXT needs the input's gradient only (no weight gradients)

    def lxt(x, target, bf16=False):
        xg = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(xg)
        y[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
        return (xg * xg.grad).detach().float().numpy()

    info = machine_info()
    info.update(torch=torch.__version__, threads=a.threads, model=a.model, size=a.size, import_s=round(import_s, 2),
                rules=a.rules, composite=composite if isinstance(composite, str) else composite.name)
    print(json.dumps(info))
    rows = []
    for n in a.batches:
        torch.manual_seed(n)
        x = torch.randn(n, 3, a.size, a.size)
        xn = x.numpy()
        with torch.no_grad():
            target = model(x).argmax(1).numpy()
        methods = {"fastlrp cpu": lambda: ex.explain(xn, target=target), "LXT 2.1": lambda: lxt(x, target)}
        if ex16 is not None:  # reduced precision on both sides: fastlrp's bf16 GEMMs, torch's bf16 autocast
            methods["fastlrp bf16"] = lambda: ex16.explain(xn, target=target)
            if a.rules != "cp_gamma":  # zennit's rule hooks mix dtypes under autocast (F.linear refuses)
                methods["LXT bf16"] = lambda: lxt(x, target, bf16=True)
        out, peak, times = {}, {}, {k: [] for k in methods}
        for k, f in methods.items():
            out[k], peak[k] = measure_peak(f)
        for _ in range(a.repeats):
            for k, f in methods.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        ref = out["LXT 2.1"]
        med = {k: statistics.median(v) for k, v in times.items()}
        t_limit = limit_flops(graph, ex.rules) * n / rates[n]
        for k in methods:
            row = {"model": a.model, "size": a.size, "batch": n, "rules": a.rules, "method": k, "samples_per_s": n / med[k],
                   "x_lxt": med["LXT 2.1"] / med[k], "peak_mib": peak[k], "x_limit": med[k] / t_limit,
                   "torch_forward_gflops": rates[n] / 1e9,
                   "x_lxt_bf16": med["LXT bf16"] / med[k] if "LXT bf16" in med else None,
                   "err_vs_lxt": float(np.abs(out[k] - ref).max() / np.abs(ref).max()), "times_s": times[k]}
            rows.append(row)
            print(f"{a.model} {a.size} {a.rules} batch {n:3d}  {k:12s} {row['samples_per_s']:8.3f} samples/s  "
                  f"x LXT {row['x_lxt']:5.2f}"
                  + (f" (x LXT bf16 {row['x_lxt_bf16']:5.2f})" if row["x_lxt_bf16"] is not None else "")
                  + f"  x limit {row['x_limit']:5.2f}  peak {row['peak_mib']:8.0f} MiB  err vs LXT {row['err_vs_lxt']:.1e}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
