"""CPU benchmark: fastlrp against zennit 1.0.0 and Captum 0.9.0's LRP, same process,
same inputs, same threads.

For each model, correctness comes first: every fastlrp backend is compared with
the float64 reference backend and with zennit on a small batch, and Captum with
fastlrp's reference computing the rules Captum has (captum_peer.py: Captum cannot
express these composites, its rows are timings of different rules). Then each
(batch size, composite) is timed with the methods interleaved: one warm-up call
each, then ``--repeats`` rounds, median reported. The FLOP limit is docs/design.md
section 3's: per layer, the GEMM work its rule really needs (a multiple of the
layer's forward work, smaller when its input is known non-negative), at the
forward GEMM rate torch reaches on this machine in this run.

    python bench/bench_cpu.py                      # the full table of issue 3
    python bench/bench_cpu.py --quick              # a small smoke run
    python bench/bench_cpu.py --models vgg16 --batches 16 --composites epsilon_plus_flat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/_zennit_compat.py: imports zennit where torchvision/Pillow are missing
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

COMPOSITES = {
    "epsilon_plus_flat": ("epsilon_plus_flat", "EpsilonPlusFlat", {}),
    "epsilon_alpha2_beta1_flat": ("epsilon_alpha2_beta1_flat", "EpsilonAlpha2Beta1Flat", {}),
    "epsilon_gamma_box": ("epsilon_gamma_box(low=-3, high=3)", "EpsilonGammaBox", {"low": -3.0, "high": 3.0}),
}

# GEMM work per rule in units of the layer's forward work (docs/design.md section 3.1):
# (forward-side units, backward units per target) for an input known non-negative,
# then for a signed input. The forward pass itself is one forward-side unit; the
# sign split doubles K for signed inputs ([x+ | x-] packing); model-constant sums
# (flat counts, ZBox bound terms) cost nothing per call.
LIMIT_MULTIPLE = {
    "epsilon": ((1, 1), (1, 1)),
    "flat": ((1, 1), (1, 1)),
    "wsquare": ((1, 1), (1, 1)),
    "zplus": ((2, 1), (3, 2)),
    "alphabeta": ((2, 2), (3, 4)),
    "gamma": ((2, 2), (2, 2)),  # signed: W x, |W| |x|; W^T (a+b), |W|^T (a-b) (docs/design.md 3.5)
    "zbox": ((1, 2), (1, 2)),
}


# ------------------------------------------------------------------------------------
# machine and memory
# ------------------------------------------------------------------------------------
#: The /proc/cpuinfo flags the kernels care about (the ISA a number was measured with).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def machine_info() -> dict:
    """Python, platform, CPU model (name, family, model), the ISA flags and, when fastlrp's
    core is built, the micro-kernels it runs (float32 and bf16)."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                names = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model"}
                if key in names and names[key] not in info:
                    info[names[key]] = val
                elif key == "flags":
                    have = set(val.split())
                    info["isa_flags"] = [f for f in ISA_FLAGS if f in have]
                    break
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    try:
        from fastlrp import _core

        gi = _core.gemm_info()
        info["fastlrp_kernel"] = gi.get("active")
        info["fastlrp_bf16_kernel"] = gi.get("bf16") or None
    except Exception:  # noqa: BLE001 - the core is optional: the bench still runs (numba)
        pass
    return info


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_peak(fn):
    """Run fn; return (result, peak extra resident memory in MiB over the RSS before).

    Freed heap memory is handed back to the OS first (malloc_trim), so memory that
    an earlier run left in the allocator's free lists does not hide this run's peak.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark
        base = _rss_kib("VmRSS")
        out = fn()
        peak = _rss_kib("VmHWM")
        return out, max(peak - base, 0) / 1024.0
    except OSError:
        return fn(), float("nan")


# ------------------------------------------------------------------------------------
# FLOP limit
# ------------------------------------------------------------------------------------


def layer_flops(graph, node) -> float:
    w = node.params["weight"]
    if node.op == "dense":  # at every leading position (a transformer's tokens)
        return 2.0 * w.shape[0] * w.shape[1] * float(np.prod(node.shape[:-1]))
    return 2.0 * float(np.prod(node.shape)) * float(np.prod(w.shape[1:]))


def forward_flops(graph) -> float:
    return sum(layer_flops(graph, n) for n in graph.parametric())


def limit_flops(graph, rules, targets: int = 1) -> float:
    """GEMM FLOPs per sample that explaining ``targets`` outputs really needs."""
    total = 0.0
    for n in graph.parametric():
        pos, signed = LIMIT_MULTIPLE[rules[n.name].kind]
        fw, bw = pos if graph.known_nonnegative(n.inputs[0]) else signed
        total += (fw + targets * bw) * layer_flops(graph, n)
    return total


# ------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------
class ZennitRunner:
    def __init__(self, zmodel, comp_key):
        import torch
        import zennit.composites as zc
        from zennit.canonizers import SequentialMergeBatchNorm

        _, cls, kw = COMPOSITES[comp_key]
        self.torch = torch
        self.model = zmodel
        self.composite = getattr(zc, cls)(canonizers=[SequentialMergeBatchNorm()], **kw)
        self.handles = self.composite.register(zmodel)

    def __call__(self, x, targets):
        torch = self.torch
        xt = torch.from_numpy(x).requires_grad_(True)
        out = self.model(xt)
        results = []
        for k, t in enumerate(targets):
            seed = torch.zeros_like(out)
            rows = torch.arange(out.shape[0])
            seed[rows, t] = out[rows, t]
            (g,) = torch.autograd.grad(out, xt, seed, retain_graph=k + 1 < len(targets))
            results.append(g)
        return results[0].numpy() if len(results) == 1 else torch.stack(results, 1).numpy()

    def close(self):
        self.composite.remove()


def torch_forward_rate(model, x, repeats):
    import torch

    xt = torch.from_numpy(x)
    with torch.no_grad():
        model(xt)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(xt)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def backend_args(name: str) -> dict:
    """Explainer / get_backend arguments of a --backends name: ``cpu-bf16`` is the cpu
    backend with ``precision="bf16"``; other names are backends."""
    return {"backend": "cpu", "precision": "bf16"} if name == "cpu-bf16" else {"backend": name}


def max_rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def captum_status() -> str:
    """"ok" when Captum's LRP imports, else why not ("not installed", or the error)."""
    try:
        import captum.attr  # noqa: F401
    except ModuleNotFoundError:
        return "not installed"
    except Exception as e:  # noqa: BLE001 - report and go on
        return f"fails: import: {e}"
    return "ok"


def captum_check(graph, cmodel, comp, xs, tgt):
    """(runner or None, what its rows are, max rel error of Captum's relevance against
    fastlrp's float64 reference computing the same rules (nan where fastlrp has none))."""
    import fastlrp
    from captum_peer import CAPTUM_RULES, CaptumRunner, matched_composite

    matched = matched_composite(comp)
    try:
        cr = CaptumRunner(cmodel, comp, xs)
        got = cr(xs, [tgt])
    except Exception as e:  # noqa: BLE001 - the row says why
        return None, f"fails: {type(e).__name__}: {str(e).splitlines()[0][:160]}", float("nan")
    rules = f"rules differ: {CAPTUM_RULES[comp]['differs']}"
    if matched is None:
        return cr, rules + "; unchecked (no fastlrp rule computes Captum's GammaRule)", float("nan")
    want = fastlrp.Explainer(graph, matched, backend="reference").explain(xs.astype(np.float64), target=tgt)
    err = max_rel_err(got, want)
    return cr, rules + f"; max rel error vs fastlrp's reference with Captum's rules {err:.1e}", err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "mnist_cnn", "vgg16", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--composites", nargs="+", default=list(COMPOSITES))
    ap.add_argument("--backends", nargs="+", default=["cpu", "numba"],
                    help="fastlrp backends; cpu-bf16: the cpu backend with precision='bf16' (AMX / AVX512_BF16)")
    ap.add_argument("--targets10", action=argparse.BooleanOptionalAction, default=True,
                    help="also time explaining all 10 classes of each sample")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-zennit", action="store_true")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small models and batches, 2 repeats")
    ap.add_argument("--json", type=str, default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.repeats = ["mlp", "mnist_cnn"], [1, 16], 2

    import torch

    import fastlrp
    from models import build

    torch.set_num_threads(args.threads)
    backends = []
    for name in args.backends:
        try:
            fastlrp.get_backend(**backend_args(name))
            backends.append(name)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"# backend {name} unavailable: {e}")
    import numba  # noqa: F401 - so that set_num_threads reaches it too

    fastlrp.set_num_threads(args.threads)
    use_zennit = not args.no_zennit
    if use_zennit:
        try:
            from _zennit_compat import import_zennit

            import_zennit()
        except Exception as e:  # noqa: BLE001
            print(f"# zennit unavailable ({e}); ratios to zennit are not reported")
            use_zennit = False

    captum = "off" if args.no_captum else captum_status()
    if captum != "ok":
        print(f"# captum: {captum}")

    info = machine_info()
    info.update(torch=torch.__version__, fastlrp=fastlrp.__version__, threads=args.threads)
    print("# machine:", json.dumps(info))
    rows = []
    rng = np.random.default_rng(0)
    header = (f"{'model':<10} {'batch':>5} {'composite':<26} {'tgt':>3} {'method':<14} {'samples/s':>10} "
              f"{'x zennit':>8} {'x captum':>13} {'x limit':>8} {'peak MiB':>9} {'err vs ref':>10}")
    for mname in args.models:
        model, shape = build(mname)
        zmodel = build(mname, zennit_sum=True)[0] if use_zennit else None
        cmodel = build(mname, zennit_sum="captum")[0] if captum == "ok" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fastlrp.from_torch(model, torch.zeros((1, *shape)))
        fwd_flops = forward_flops(graph)
        xf = rng.standard_normal((max(args.batches), *shape)).astype(np.float32)
        t_fwd = torch_forward_rate(model, xf[: max(args.batches)], args.repeats)
        rate = fwd_flops * max(args.batches) / t_fwd
        print(f"\n## {mname}: {fwd_flops / 1e9:.3f} GFLOP/sample forward; torch forward "
              f"{max(args.batches) / t_fwd:.1f} samples/s = {rate / 1e9:.1f} GFLOP/s at batch {max(args.batches)}")
        for comp in args.composites:
            spec = COMPOSITES[comp][0]
            ref = fastlrp.Explainer(graph, spec, backend="reference")
            exps = {b: fastlrp.Explainer(graph, spec, **backend_args(b)) for b in backends}
            zr = ZennitRunner(zmodel, comp) if use_zennit else None
            # correctness first, on a small batch
            xs = xf[:2]
            want = ref.explain(xs.astype(np.float64))
            errs = {b: max_rel_err(e.explain(xs), want) for b, e in exps.items()}
            tgt = ref.forward(xs.astype(np.float64)).argmax(axis=1)
            if zr is not None:
                errs["zennit"] = max_rel_err(zr(xs, [tgt]), want)
            print(f"# {mname} {comp}: max rel error vs float64 reference: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
            cr, cstatus = None, captum
            if cmodel is not None:
                cr, cstatus, errs["captum*"] = captum_check(graph, cmodel, comp, xs, tgt)
            if not args.no_captum:
                print(f"# {mname} {comp}: captum* = {cstatus}")
            runs = [(b, 1) for b in args.batches] + ([(max(args.batches), 10)] if args.targets10 else [])
            print(header)
            for batch, ntgt in runs:
                x = np.ascontiguousarray(xf[:batch])
                out = ref.forward(x[:1].astype(np.float64))
                k = out.shape[-1]
                methods = {}
                if ntgt == 1:
                    tgt_np = np.argmax(exps[backends[0]].forward(x), axis=1) if backends else None
                    for b, e in exps.items():
                        methods[f"fastlrp-{b}"] = (lambda e=e, t=tgt_np: e.explain(x, target=t))
                    if zr is not None:
                        methods["zennit"] = (lambda t=tgt_np: zr(x, [t]))
                    if cr is not None:
                        methods["captum*"] = (lambda t=tgt_np: cr(x, [t]))
                else:
                    allt = np.tile(np.arange(k), (batch, 1))
                    for b, e in exps.items():
                        methods[f"fastlrp-{b}"] = (lambda e=e: e.explain(x, target=allt))
                    if zr is not None:
                        methods["zennit"] = (lambda: zr(x, [allt[:, j] for j in range(k)]))
                    if cr is not None:
                        methods["captum*"] = (lambda: cr(x, [allt[:, j] for j in range(k)]))
                times = {m: [] for m in methods}
                peaks = {m: 0.0 for m in methods}
                for m, fn in methods.items():  # warm-up, and peak memory
                    _, peaks[m] = measure_peak(fn)
                for _ in range(args.repeats):
                    for m, fn in methods.items():
                        t0 = time.perf_counter()
                        fn()
                        times[m].append(time.perf_counter() - t0)
                med = {m: statistics.median(v) for m, v in times.items()}
                t_limit = limit_flops(graph, ref.rules, ntgt) * batch / rate
                for m in methods:
                    sps = batch / med[m]
                    xz = (med["zennit"] / med[m]) if "zennit" in med else float("nan")
                    xc = f"{med['captum*'] / med[m]:.2f}" if "captum*" in med else cstatus.split(":")[0]
                    xl = med[m] / t_limit
                    err = errs.get(m.replace("fastlrp-", ""), float("nan"))
                    row = dict(model=mname, batch=batch, composite=comp, targets=ntgt, method=m,
                               samples_per_s=sps, ratio_zennit=xz, ratio_captum=xc, ratio_limit=xl,
                               peak_mib=peaks[m], err_vs_ref=err, seconds=med[m])
                    if m == "captum*":
                        row["captum_rules"] = cstatus
                    rows.append(row)
                    print(f"{mname:<10} {batch:>5} {comp:<26} {ntgt:>3} {m:<14} {sps:>10.2f} {xz:>8.2f} "
                          f"{xc:>13} {xl:>8.2f} {peaks[m]:>9.1f} {err:>10.1e}", flush=True)
            if zr is not None:
                zr.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
