"""GFLOP/s of the cpu backend's batched product of small matrices (``fastlrp._core.batched_matmul``,
src/cpp/matmul_cpu.h) against NumPy's and torch's batched matmul, in one run, on the
attention products of ViT-B/16 (heads of 197 tokens x 64, as the importer's permuted views):

    q @ k^T          (197 x 64) @ (64 x 197)  per head, the forward scores
    A @ v            (197 x 197) @ (197 x 64) per head, the forward values
    v * (A^T @ g)    the values' relevance (CP-LRP), the multiply fused into the product

    python bench/bench_matmul.py                 # batch 16, 1 thread, CPU time (time.process_time)
    python bench/bench_matmul.py --threads 2     # wall time

Each figure is the best of --repeats calls after a warm-up; every product is checked against
float64 NumPy first (max error / max |result|).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # NumPy's BLAS, before it loads
        os.environ.setdefault(var, str(a.threads))
    import numpy as np

    from fastlrp import _ext

    core = _ext.core
    if core is None or not hasattr(core, "batched_matmul"):
        raise SystemExit(f"bench_matmul: fastlrp._core with batched_matmul is not built: {_ext.core_error}")
    core.set_num_threads(a.threads)
    try:
        import torch

        torch.set_num_threads(a.threads)
    except ImportError:
        torch = None
    clock = time.process_time if a.threads == 1 else time.perf_counter

    rng = np.random.default_rng(0)
    N, H, T, d = a.batch, a.heads, a.tokens, a.dim
    qkv = rng.standard_normal((N, T, 3, H, d)).astype(np.float32)  # a projection's output, split into heads
    q, k, v = (np.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
    A = rng.random((N, H, T, T)).astype(np.float32)
    g = rng.standard_normal((N, H, T, d)).astype(np.float32)
    sw = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    tt = torch.from_numpy if torch else None
    cases = [
        ("q @ k^T", lambda: core.batched_matmul(q, sw(k)), lambda: np.matmul(q, sw(k)),
         lambda: torch.matmul(tt(qkv)[:, :, 0].transpose(1, 2), tt(qkv)[:, :, 1].transpose(1, 2).transpose(-1, -2)),
         lambda: q.astype(np.float64) @ sw(k).astype(np.float64)),
        ("A @ v", lambda: core.batched_matmul(A, v), lambda: np.matmul(A, v),
         lambda: torch.matmul(tt(A), tt(qkv)[:, :, 2].transpose(1, 2)),
         lambda: A.astype(np.float64) @ v.astype(np.float64)),
        ("v * (A^T @ g)", lambda: core.batched_matmul(sw(A), g, v), lambda: v * np.matmul(sw(A), g),
         lambda: tt(qkv)[:, :, 2].transpose(1, 2) * torch.matmul(tt(A).transpose(-1, -2), tt(g)),
         lambda: v * (sw(A).astype(np.float64) @ g.astype(np.float64))),
    ]
    flop = 2.0 * N * H * T * T * d

    def best(f):
        f()
        t = float("inf")
        for _ in range(a.repeats):
            s = clock()
            f()
            t = min(t, clock() - s)
        return t

    print(f"batch {N}, {H} heads, {T} tokens x {d}, {a.threads} thread(s), "
          f"{'CPU' if a.threads == 1 else 'wall'} time, best of {a.repeats}; GFLOP/s (ms)")
    print(f"{'product':16s} {'fastlrp':>16s} {'numpy':>16s} {'torch':>16s}   fastlrp err")
    for name, ours, npy, tor, ref in cases:
        want = ref()
        err = np.abs(ours() - want).max() / np.abs(want).max()
        cols = []
        for f in (ours, npy, tor if torch else None):
            if f is None:
                cols.append(f"{'-':>16s}")
                continue
            t = best(f)
            cols.append(f"{flop / t / 1e9:8.1f} ({t * 1e3:5.1f})")
        print(f"{name:16s} {' '.join(cols)}   {err:.1e}")


if __name__ == "__main__":
    main()
