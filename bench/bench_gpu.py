"""GPU benchmark: fastlrp's CUDA backend against zennit 1.0.0 on torch CUDA, same process, same inputs.

Per model and composite, correctness comes first: fastlrp's relevance is
compared with zennit's (both float32 on the GPU) on a small batch, and a case
that disagrees beyond ``--tol`` is not timed. Then each batch size is timed with
fastlrp and zennit interleaved (inputs resident on the GPU as torch tensors,
relevance left there): warm-up calls, then ``--repeats`` rounds, each call
bracketed by device synchronisation, median reported.

TF32 is off for torch (cuDNN and matmul) in the headline numbers, since fastlrp
computes in plain FP32; the torch forward rate behind the FLOP limit is measured
under the same setting. ``--zennit-tf32`` adds a separate, labelled zennit column
with TF32 on.

The FLOP limit is bench_cpu.py's (docs/design.md section 3.1): the GEMM work each rule
needs, at the forward FLOP rate torch reaches on this GPU in this run. ``x limit``
divides by torch's best forward rate for the model (over the batches run, normally
the largest); ``x lim@b`` by torch's forward rate at the row's own batch size.

    python bench/bench_gpu.py                           # the full table
    python bench/bench_gpu.py --quick                   # VGG-16 and ResNet-50 at batches 1 and 64
    python bench/bench_gpu.py --models resnet50 --batches 64 --composites epsilon_plus_flat
    python bench/bench_gpu.py --device cpu --backend cuda-emu --json r.json   # harness smoke run, no GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/_zennit_compat.py: imports zennit where torchvision/Pillow are missing
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_cpu import ZennitRunner as CpuZennitRunner  # noqa: E402
from bench_cpu import COMPOSITES, forward_flops, limit_flops, machine_info, max_rel_err, measure_peak  # noqa: E402

MIB = 1024.0 * 1024.0
DEFAULT_MODELS = ["vgg16_224", "resnet50", "mlp", "mnist_cnn", "vgg16", "resnet18"]
DEFAULT_BATCHES = [1, 16, 64, 256]

NUMERIC_KEYS = ("fastlrp_seconds", "zennit_seconds", "fastlrp_samples_per_s", "zennit_samples_per_s", "ratio_zennit",
                "torch_forward_samples_per_s", "limit_seconds", "ratio_limit", "ratio_limit_same_batch",
                "fastlrp_peak_mib", "fastlrp_peak_abs_mib", "zennit_peak_mib", "zennit_peak_abs_mib")
TF32_KEYS = ("zennit_tf32_seconds", "zennit_tf32_samples_per_s", "ratio_zennit_tf32", "zennit_tf32_peak_mib")

# the targets, per row
TARGET_SPEED_B64 = 2.0   # >= 2x zennit at batch 64, every composite
TARGET_SPEED_B1 = 10.0   # >= 10x zennit at batch 1
TARGET_LIMIT = 1.5       # fastlrp time <= 1.5x the FLOP-limit time
TARGET_MEMORY = 0.5      # fastlrp peak <= half of zennit's


# ------------------------------------------------------------------------------------
# torch settings, errors
# ------------------------------------------------------------------------------------
def set_tf32(torch, on: bool) -> None:
    with warnings.catch_warnings():  # newer torch deprecates the flags in favour of fp32_precision
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on


def tf32_state(torch) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                    "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {e}"}


def is_oom(e: BaseException) -> bool:
    """Out of device memory on either side (fastlrp raises a MemoryError subclass)."""
    if isinstance(e, MemoryError):
        return True
    if type(e).__name__ in ("OutOfMemoryError",):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "alloc_failed" in msg)


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def _dist_version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().float().cpu().numpy()
    return np.asarray(a)


def finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_or_none(x) for x in v]
    return v


# ------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------
class ZennitRunner(CpuZennitRunner):
    """zennit's composite on a torch model (set up as in bench_cpu.py); relevance =
    input gradient seeded by one_hot(target) * output, tensors left on the device."""

    def __call__(self, x, target):
        torch = self.torch
        xg = x.detach().requires_grad_(True)  # shares x's storage: no copy
        out = self.model(xg)
        t = target[:, None]
        seed = torch.zeros_like(out).scatter_(1, t, out.detach().gather(1, t))
        (g,) = torch.autograd.grad(out, xg, seed)
        return g

class Device:
    """Synchronisation and memory measurement for one run (torch side and fastlrp side)."""

    def __init__(self, torch, device: str):
        self.torch = torch
        self.device = device
        self.cuda = device == "cuda"

    def sync(self, backend=None):
        if self.cuda:
            self.torch.cuda.synchronize()
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()

    def cleanup(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def torch_peak(self, fn):
        """(peak MiB above the level before the call, absolute peak MiB) of torch's allocations."""
        if not self.cuda:  # CPU torch (smoke mode): resident-memory growth
            out, peak = measure_peak(fn)
            del out
            return peak, float("nan")
        torch = self.torch
        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        self.sync()
        peak = torch.cuda.max_memory_allocated()
        del out
        return (peak - base) / MIB, peak / MIB

    def fastlrp_peak(self, fn, backend):
        """The same for fastlrp's device allocations (backend.memory_stats)."""
        self.sync(backend)
        base = backend.memory_stats()["bytes_in_use"]
        backend.reset_peak()
        out = fn()
        self.sync(backend)
        peak = backend.memory_stats()["peak_bytes"]
        del out
        return (peak - base) / MIB, peak / MIB


def torch_forward_time(torch, model, x, dev: Device, warmup: int, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(max(warmup, 1)):
            model(x)
        ts = []
        for _ in range(repeats):
            dev.sync()
            t0 = time.perf_counter()
            model(x)
            dev.sync()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_interleaved(methods: dict, dev: Device, backend, warmup: int, repeats: int):
    """Warm up each method (the first call also measures its peak memory), then time round-robin.

    ``methods``: name -> (fn, peak_fn). Returns (median seconds, peaks, status) per name;
    a method that runs out of memory (or fails) is dropped with its status set.
    """
    status = {m: "ok" for m in methods}
    peaks = {m: (float("nan"), float("nan")) for m in methods}
    for m, (fn, peak_fn) in methods.items():
        try:
            peaks[m] = peak_fn(fn)
            for _ in range(warmup - 1):
                fn()
            dev.sync(backend)
        except Exception as e:  # noqa: BLE001 - report the cell and go on
            status[m] = "oom" if is_oom(e) else "error: " + describe(e)
            dev.cleanup()
    live = [m for m in methods if status[m] == "ok"]
    times = {m: [] for m in live}
    for r in range(repeats):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for m in order:
            if status[m] != "ok":
                continue
            fn = methods[m][0]
            try:
                dev.sync(backend)
                t0 = time.perf_counter()
                out = fn()
                dev.sync(backend)
                times[m].append(time.perf_counter() - t0)
                del out
            except Exception as e:  # noqa: BLE001
                status[m] = "oom" if is_oom(e) else "error: " + describe(e)
                dev.cleanup()
    med = {m: (statistics.median(v) if status[m] == "ok" and v else float("nan")) for m, v in times.items()}
    for m in methods:
        med.setdefault(m, float("nan"))
    return med, peaks, status


def check_case(exp, zr, xc, tc, tc_np, fl_input, dev: Device, tol: float, ref_graph, spec) -> dict:
    """fastlrp against zennit on the batch ``xc`` (and both against the float64 reference on one sample)."""
    import fastlrp

    check = dict(batch=int(xc.shape[0]), tol=tol)
    try:
        r_f = exp.explain(fl_input(xc), target=tc_np)
        dev.sync(exp.backend)
        is_torch = hasattr(r_f, "detach") and hasattr(r_f, "device")
        check["fastlrp_output"] = f"torch {r_f.device}" if is_torch else type(r_f).__name__
        r_z = zr(xc, tc)
        a, z = to_numpy(r_f), to_numpy(r_z)
        del r_f, r_z
        if a.shape != z.shape:
            raise ValueError(f"fastlrp relevance has shape {a.shape}, zennit's {z.shape}")
        err = max_rel_err(a, z) if np.isfinite(a).all() else float("inf")
        check.update(err_vs_zennit=err, passed=bool(err <= tol),
                     relevance_sum_fastlrp=float(a.sum()), relevance_sum_zennit=float(z.sum()))
        if ref_graph is not None:
            ref = fastlrp.Explainer(ref_graph, spec, backend="reference")
            want = ref.explain(to_numpy(xc[:1]).astype(np.float64), target=tc_np[:1])
            check.update(fastlrp_err_vs_reference=max_rel_err(a[:1], want),
                         zennit_err_vs_reference=max_rel_err(z[:1], want))
    except Exception as e:  # noqa: BLE001 - the case is reported and not timed
        check.update(passed=False, error=("oom: " if is_oom(e) else "") + describe(e), err_vs_zennit=float("nan"),
                     oom=is_oom(e))
    return check


def check_targets(row: dict) -> dict:
    """The issue's targets for one row: True (met), False (missed) or None (does not apply / unknown)."""
    ok = row["fastlrp_status"] == "ok"
    zok = row["zennit_status"] == "ok"
    xz, xl = row["ratio_zennit"], row["ratio_limit"]
    t = {}
    if row["batch"] == 64:
        t["x_zennit_b64>=2"] = (bool(xz >= TARGET_SPEED_B64) if zok else None) if ok else False
    if row["batch"] == 1:
        t["x_zennit_b1>=10"] = (bool(xz >= TARGET_SPEED_B1) if zok else None) if ok else False
    t["x_limit<=1.5"] = (bool(xl <= TARGET_LIMIT) if math.isfinite(xl) else None) if ok else False
    fp, zp = row["fastlrp_peak_mib"], row["zennit_peak_mib"]
    if not ok:
        t["mem<=zennit/2"] = False
    elif zok and math.isfinite(fp) and math.isfinite(zp) and row["memory_comparable"]:
        t["mem<=zennit/2"] = bool(fp <= TARGET_MEMORY * zp)
    else:
        t["mem<=zennit/2"] = None
    return t


def fmt_targets(t: dict) -> str:
    short = {"x_zennit_b64>=2": "2x@64", "x_zennit_b1>=10": "10x@1", "x_limit<=1.5": "lim", "mem<=zennit/2": "mem"}
    return " ".join(f"{short[k]}:{'met' if v else ('-' if v is None else 'MISSED')}" for k, v in t.items())


def fnum(v, width, prec, fallback="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{fallback:>{width}}"
    return f"{v:>{width}.{prec}f}"


# ------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_MODELS)}")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default: 1 16 64 256")
    ap.add_argument("--composites", nargs="+", default=list(COMPOSITES), choices=list(COMPOSITES))
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per cell (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per method and cell (default 3)")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="max |fastlrp - zennit| / max |zennit| allowed before a case is timed (default 1e-3)")
    ap.add_argument("--check-batch", type=int, default=2, help="samples in the correctness check (default 2)")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                    help="also compare both with fastlrp's float64 reference backend on one sample "
                         "(default: on with --backend cuda-emu, off otherwise)")
    ap.add_argument("--zennit-tf32", action="store_true",
                    help="add a zennit column with TF32 on (labelled; the headline columns keep TF32 off)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True for zennit and the torch forward rate")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="where torch (zennit, the forward rate) runs; cpu only with --backend cuda-emu")
    ap.add_argument("--backend", choices=["cuda", "cuda-emu"], default="cuda",
                    help="fastlrp backend; cuda-emu runs the GPU kernels on the CPU (smoke test only)")
    ap.add_argument("--quick", action="store_true", help="VGG-16 and ResNet-50 at 224, batches 1 and 64, 3 repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)

    emu = args.backend == "cuda-emu"
    if emu != (args.device == "cpu"):
        ap.error("--backend cuda runs with --device cuda, and --backend cuda-emu with --device cpu")
    if emu:  # the smoke mode: a tiny model, batches 1-2, one repeat
        defaults = (["tiny_resnet"], [1, 2], 1, 1)
    elif args.quick:
        defaults = (["vgg16_224", "resnet50"], [1, 64], 3, 2)
    else:
        defaults = (DEFAULT_MODELS, DEFAULT_BATCHES, 10, 3)
    models_arg = args.models or defaults[0]
    batches = sorted(set(args.batches or defaults[1]))
    repeats = args.repeats or defaults[2]
    warmup = args.warmup or defaults[3]
    use_ref = emu if args.reference is None else args.reference

    import torch

    import fastlrp
    from models_gpu import MODELS, build

    for m in models_arg:
        if m not in MODELS:
            ap.error(f"unknown model '{m}' (choose from {', '.join(MODELS)})")

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA device; on a machine without a GPU use "
              "--device cpu --backend cuda-emu (harness smoke run only)", file=sys.stderr)
        return 2
    try:
        from _zennit_compat import import_zennit

        import_zennit()
    except Exception as e:  # noqa: BLE001
        print(f"bench_gpu: zennit is needed (the correctness check and the baseline): {describe(e)}", file=sys.stderr)
        return 2

    dev = Device(torch, args.device)
    tdev = torch.device(args.device)
    set_tf32(torch, False)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)

    info = machine_info()
    gpu_name = torch.cuda.get_device_name() if dev.cuda else "none (torch on the CPU)"
    info.update(torch=torch.__version__, torch_cuda=getattr(torch.version, "cuda", None),
                cudnn=(torch.backends.cudnn.version() if dev.cuda else None), zennit=_dist_version("zennit"),
                fastlrp=fastlrp.__version__, gpu=gpu_name, device=args.device, backend=args.backend)
    settings = dict(tf32=tf32_state(torch), cudnn_benchmark=bool(args.cudnn_benchmark), repeats=repeats,
                    warmup=warmup, tol=args.tol, check_batch=args.check_batch, reference_check=use_ref,
                    zennit_tf32_column=bool(args.zennit_tf32 and dev.cuda), seed=args.seed,
                    timing="per call: sync, perf_counter, call, sync (torch and fastlrp); median of the repeats")
    print(f"# GPU: {gpu_name}")
    print("# machine:", json.dumps(info))
    print("# settings:", json.dumps(settings))

    rows, checks, model_info, fatal = [], [], {}, []
    rng = np.random.default_rng(args.seed)
    maxb = max(batches)
    zcol = bool(args.zennit_tf32 and dev.cuda)
    header = (f"{'model':<11} {'composite':<26} {'batch':>5} {'fastlrp/s':>10} {'zennit/s':>10} {'x zennit':>8} "
              + (f"{'zenTF32/s':>10} {'x zTF32':>8} " if zcol else "")
              + f"{'torch fwd/s':>11} {'x limit':>8} {'x lim@b':>8} {'MiB flrp':>9} {'MiB zen':>9}  targets")
    fastlrp_device_name = None

    for mname in models_arg:
        model, shape = build(mname, seed=args.seed)
        zmodel = build(mname, zennit_sum=True, seed=args.seed)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fastlrp.from_torch(model, torch.zeros((1, *shape)))
        model = model.to(tdev)
        zmodel = zmodel.to(tdev)
        fwd_flops = forward_flops(graph)
        zennit_resident = sum(t.numel() * t.element_size() for t in list(zmodel.parameters()) + list(zmodel.buffers()))
        x_all = torch.from_numpy(rng.standard_normal((maxb, *shape)).astype(np.float32)).to(tdev).contiguous()

        # torch's forward rate (TF32 off), per batch; the FLOP limit uses the best
        fwd_t = {}
        for b in batches:
            try:
                fwd_t[b] = torch_forward_time(torch, model, x_all[:b], dev, warmup, max(repeats, 3))
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                fwd_t[b] = float("nan")
                dev.cleanup()
        rates = {b: fwd_flops * b / t for b, t in fwd_t.items() if math.isfinite(t)}
        best_rate = max(rates.values()) if rates else float("nan")
        fwd_tf32 = None
        if zcol and rates:
            bb = max(rates)
            set_tf32(torch, True)
            try:
                fwd_tf32 = bb / torch_forward_time(torch, model, x_all[:bb], dev, warmup, max(repeats, 3))
            finally:
                set_tf32(torch, False)
        # targets: the arg-max class under torch (the same explicit targets for both sides)
        with torch.no_grad():
            chunks = [model(x_all[i:i + 16]).argmax(1) for i in range(0, maxb, 16)]
        targ_all = torch.cat(chunks).contiguous()
        targ_np = targ_all.cpu().numpy().astype(np.int64)
        model_info[mname] = dict(input_shape=list(shape), forward_gflop_per_sample=fwd_flops / 1e9,
                                 torch_forward_samples_per_s={str(b): b / t for b, t in fwd_t.items()},
                                 torch_forward_gflops={str(b): r / 1e9 for b, r in rates.items()},
                                 best_forward_gflops=best_rate / 1e9, zennit_resident_mib=zennit_resident / MIB,
                                 torch_forward_tf32_samples_per_s=fwd_tf32, limit_gflop_per_sample={})
        print(f"\n## {mname} {tuple(shape)}: {fwd_flops / 1e9:.3f} GFLOP/sample forward; torch forward (TF32 off) "
              + ", ".join(f"b{b} {b / t:.1f}/s" for b, t in fwd_t.items())
              + f"; best {best_rate / 1e9:.1f} GFLOP/s" + (f"; TF32 on {fwd_tf32:.1f}/s" if fwd_tf32 else ""))

        for comp in args.composites:
            spec = COMPOSITES[comp][0]
            rules = fastlrp.get_composite(spec).resolve(graph)
            lim = limit_flops(graph, rules, 1)
            model_info[mname]["limit_gflop_per_sample"][comp] = lim / 1e9
            base_row = dict(model=mname, composite=comp, gpu=gpu_name)

            def new_row(b, **kw):  # every row has every key; NaN (null in the JSON) where not measured
                row = dict(base_row, batch=b, err_vs_zennit=float("nan"), fastlrp_status="not run",
                           zennit_status="not run", memory_comparable=dev.cuda)
                row.update({k: float("nan") for k in NUMERIC_KEYS})
                if zcol:
                    row.update(zennit_tf32_status="not run")
                    row.update({k: float("nan") for k in TF32_KEYS})
                row.update(kw)
                row["targets"] = check_targets(row)
                return row

            def fail_rows(status, err=float("nan")):
                for b in batches:
                    rows.append(new_row(b, fastlrp_status=status, err_vs_zennit=err))
                    print(f"{mname:<11} {comp:<26} {b:>5}  {status}")

            try:
                exp = fastlrp.Explainer(graph, spec, backend=args.backend)
                fastlrp_device_name = getattr(exp.backend, "device_name", fastlrp_device_name)
            except Exception as e:  # noqa: BLE001
                msg = ("oom" if is_oom(e) else "error") + " building the explainer: " + describe(e)
                print(f"# {mname} {comp}: {msg}")
                checks.append(dict(model=mname, composite=comp, passed=False, error=msg))
                fatal.append(f"{mname} {comp}: {msg}")
                fail_rows(msg)
                dev.cleanup()
                continue
            backend = exp.backend
            zr = ZennitRunner(zmodel, comp)

            def fl_input(x):  # torch tensors stay on the GPU; the emulator takes NumPy
                return x.cpu().numpy() if emu else x

            # ---- correctness first (on fewer samples if even the check runs out of memory) ----
            nchk = max(1, min(args.check_batch, maxb))
            while True:
                check = check_case(exp, zr, x_all[:nchk], targ_all[:nchk], targ_np[:nchk], fl_input, dev, args.tol,
                                   graph if use_ref else None, spec)
                if check.get("oom") and nchk > 1:
                    dev.cleanup()
                    nchk = 1
                    continue
                break
            if not emu and "fastlrp_output" in check and not check["fastlrp_output"].startswith("torch cuda"):
                print(f"# WARNING {mname} {comp}: fastlrp returned {check['fastlrp_output']} for a CUDA tensor "
                      "input, not a CUDA tensor: the timings include a copy to the host")
            check.update(model=mname, composite=comp)
            checks.append(check)
            line = (f"# {mname} {comp}: max rel error fastlrp vs zennit (float32, batch {nchk}): "
                    f"{check.get('err_vs_zennit', float('nan')):.1e} (tol {args.tol:g})")
            if "fastlrp_err_vs_reference" in check:
                line += (f"; vs float64 reference: fastlrp {check['fastlrp_err_vs_reference']:.1e}, "
                         f"zennit {check['zennit_err_vs_reference']:.1e}")
            if "error" in check:
                line += f"; ERROR {check['error']}"
            print(line + ("" if check["passed"] else " -> NOT TIMED"), flush=True)
            if not check["passed"]:
                why = check.get("error") or f"mismatch {check['err_vs_zennit']:.1e} > tol {args.tol:g}"
                fatal.append(f"{mname} {comp}: {why}")
                fail_rows("not timed: " + why, check.get("err_vs_zennit", float("nan")))
                zr.close()
                exp = None  # frees its device memory before the next composite
                dev.cleanup()
                continue

            # ---- timing ----
            print(header)
            skip = {}  # method -> status: a method out of memory at one batch is not tried at larger ones
            for b in batches:
                x = x_all[:b]
                xin = fl_input(x)
                t_np, t_dev = targ_np[:b], targ_all[:b]
                methods = {}
                if "fastlrp" not in skip:
                    methods["fastlrp"] = ((lambda: exp.explain(xin, target=t_np)),
                                          (lambda fn: dev.fastlrp_peak(fn, backend)))
                if "zennit" not in skip:
                    methods["zennit"] = ((lambda: zr(x, t_dev)), dev.torch_peak)
                if zcol and "zennit-tf32" not in skip:
                    def zt(x=x, t=t_dev):
                        set_tf32(torch, True)
                        try:
                            return zr(x, t)
                        finally:
                            set_tf32(torch, False)
                    methods["zennit-tf32"] = (zt, dev.torch_peak)
                med, peaks, status = time_interleaved(methods, dev, backend, warmup, repeats)
                status.update(skip)
                for m, s in status.items():
                    if s == "oom":
                        skip[m] = "oom (at a smaller batch)"
                nan = float("nan")
                tf, tz = med.get("fastlrp", nan), med.get("zennit", nan)
                t_lim = lim * b / best_rate
                t_lim_b = lim * b / rates[b] if b in rates else nan
                kw = dict(err_vs_zennit=check["err_vs_zennit"],
                          fastlrp_status=status.get("fastlrp", "not run"),
                          zennit_status=status.get("zennit", "not run"),
                          fastlrp_seconds=tf, zennit_seconds=tz,
                          fastlrp_samples_per_s=b / tf, zennit_samples_per_s=b / tz, ratio_zennit=tz / tf,
                          torch_forward_samples_per_s=b / fwd_t[b], limit_seconds=t_lim,
                          ratio_limit=tf / t_lim, ratio_limit_same_batch=tf / t_lim_b,
                          fastlrp_peak_mib=peaks.get("fastlrp", (nan, nan))[0],
                          fastlrp_peak_abs_mib=peaks.get("fastlrp", (nan, nan))[1],
                          zennit_peak_mib=peaks.get("zennit", (nan, nan))[0],
                          zennit_peak_abs_mib=peaks.get("zennit", (nan, nan))[1])
                if zcol:
                    tzt = med.get("zennit-tf32", nan)
                    kw.update(zennit_tf32_status=status.get("zennit-tf32", "not run"), zennit_tf32_seconds=tzt,
                              zennit_tf32_samples_per_s=b / tzt, ratio_zennit_tf32=tzt / tf,
                              zennit_tf32_peak_mib=peaks.get("zennit-tf32", (nan, nan))[0])
                row = new_row(b, **kw)
                rows.append(row)

                def cell(v, st, w=10, p=1):
                    return fnum(v, w, p) if st == "ok" else f"{st.split(' ')[0][:w]:>{w}}"

                line = (f"{mname:<11} {comp:<26} {b:>5} {cell(row['fastlrp_samples_per_s'], row['fastlrp_status'])} "
                        f"{cell(row['zennit_samples_per_s'], row['zennit_status'])} {fnum(row['ratio_zennit'], 8, 2)} ")
                if zcol:
                    line += (f"{cell(row['zennit_tf32_samples_per_s'], row['zennit_tf32_status'])} "
                             f"{fnum(row['ratio_zennit_tf32'], 8, 2)} ")
                line += (f"{fnum(row['torch_forward_samples_per_s'], 11, 1, 'oom')} {fnum(row['ratio_limit'], 8, 2)} "
                         f"{fnum(row['ratio_limit_same_batch'], 8, 2)} {fnum(row['fastlrp_peak_mib'], 9, 1)} "
                         f"{fnum(row['zennit_peak_mib'], 9, 1)}  {fmt_targets(row['targets'])}")
                print(line, flush=True)
                for m, s in status.items():
                    if s.startswith("error"):
                        print(f"#   {m}: {s}")
            zr.close()
            exp = None  # frees its device memory before the next composite
            dev.cleanup()
        del model, zmodel, x_all
        dev.cleanup()

    # ---- summary of the targets ----
    summary = {}
    for row in rows:
        for k, v in row["targets"].items():
            s = summary.setdefault(k, {"met": 0, "missed": 0, "n/a": 0})
            s["met" if v else ("n/a" if v is None else "missed")] += 1
    print("\n# targets (per row):", ", ".join(f"{k}: {v['met']} met, {v['missed']} missed, {v['n/a']} n/a"
                                             for k, v in summary.items()))
    if fatal:
        print("# NOT TIMED / FAILED: " + "; ".join(fatal))
    info["fastlrp_device"] = fastlrp_device_name
    if args.json:
        doc = dict(machine=info, settings=settings, models=model_info, correctness=checks, rows=rows,
                   targets_summary=summary,
                   targets=dict(x_zennit_b64=TARGET_SPEED_B64, x_zennit_b1=TARGET_SPEED_B1, x_limit=TARGET_LIMIT,
                                memory_fraction=TARGET_MEMORY))
        Path(args.json).write_text(json.dumps(finite_or_none(doc), indent=1))
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
