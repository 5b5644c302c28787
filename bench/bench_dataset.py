"""Dataset path benchmark: ``explain`` alone against ``explain_dataset`` into zarr and .npy.

A tiny CNN (models.py ``tiny_cnn``, 3x16x16 inputs), random weights and inputs, the
arg-max target. Per round, interleaved: the explain calls alone (batch by batch, the
relevance kept in memory), then a fresh ``explain_dataset`` into a zarr store and into
a .npy store (made anew each time, in a temporary directory); the median of
``--repeats`` rounds is reported in samples/s, with the store's share of the time
(1 - explain/dataset), and the process's CPU time per 1000 samples (all threads; on a
shared machine the wall times swing with the other load, the CPU time much less). Then
the store alone: the same chunks' hashing and writing (``write_chunk``, what the writer
thread does) without explaining, wall and CPU time. ``--codecs`` also times writing the same relevance into zarr
arrays with each listed compressor (no explaining), with the compressed size.

    python bench/bench_dataset.py                       # 8192 samples, batch 256
    python bench/bench_dataset.py --samples 2048 --repeats 1 --codecs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def time_codecs(R, chunk, tmp):
    """Seconds and bytes for writing ``R`` into a zarr array with each compressor."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    candidates = {
        "zstd(0) [zarr's default]": "auto",
        "blosc lz4 shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        "blosc lz4 noshuffle": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
        "zstd(1)": ZstdCodec(level=1),
        "none": None,
    }
    for name, comp in candidates.items():
        path = os.path.join(tmp, "codec.zarr")
        shutil.rmtree(path, ignore_errors=True)
        arr = zarr.create_array(path, shape=R.shape, chunks=(chunk,) + R.shape[1:], dtype=R.dtype,
                                compressors=comp)
        t0 = time.perf_counter()
        for a in range(0, R.shape[0], chunk):
            arr[a:a + chunk] = R[a:a + chunk]
        dt = time.perf_counter() - t0
        print(f"  codec {name:<26} {R.shape[0] / dt:>9.0f} samples/s  {dir_bytes(path) / R.nbytes:>6.2f} of raw size")


def store_alone(ex, x, R, bs, path):
    """(wall, CPU) seconds of hashing and writing ``R`` in chunks of ``bs`` samples into
    a new store."""
    from fastlrp.dataset import chunk_hash, open_store, run_meta
    from fastlrp.targets import parse_target

    n = x.shape[0]
    targets = parse_target(None, ex.graph.output_shape, n)
    store = open_store(path, run_meta(ex, targets, n, bs, np.dtype(ex.dtype)), overwrite=True)
    O = np.zeros((bs,) + tuple(ex.graph.output_shape), ex.dtype)
    T, V = np.zeros((bs, 1), np.int64), np.ones(bs, np.uint8)
    t0, c0 = time.perf_counter(), time.process_time()
    for c, a in enumerate(range(0, n, bs)):
        m = min(bs, n - a)
        store.write_chunk(c, R[a:a + m, None], O[:m], T[:m], V[:m], chunk_hash(x[a:a + m]))
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=None, help="samples per stored chunk (default: the batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--codecs", action="store_true", help="also time zarr compressors on their own")
    args = ap.parse_args(argv)

    import torch

    import fastlrp
    from models import build

    torch.set_num_threads(args.threads)
    fastlrp.set_num_threads(args.threads)
    model, shape = build("tiny_cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fastlrp.from_torch(model, torch.zeros((1, *shape)))
    ex = fastlrp.Explainer(graph, "epsilon_plus_flat", backend="cpu")
    x = np.random.default_rng(0).standard_normal((args.samples, *shape)).astype(np.float32)
    n, bs = args.samples, args.batch
    chunk = args.chunk or bs
    tmp = tempfile.mkdtemp(prefix="fastlrp-bench-dataset-")

    def explain_alone():
        return [ex.explain(x[a:a + bs]) for a in range(0, n, bs)]

    def into(path):
        def run():
            ex.explain_dataset(x, os.path.join(tmp, path), batch_size=bs, chunk_size=chunk, overwrite=True,
                               quiet=True)
        return run

    methods = {"explain alone": explain_alone, "explain_dataset zarr": into("r.zarr"),
               "explain_dataset npy": into("r.npy")}
    times = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    try:
        for fn in methods.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for m, fn in methods.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
        print(f"# tiny_cnn {shape}, {n} samples, batch {bs}, chunk {chunk}, {args.threads} threads, "
              f"median of {args.repeats}")
        base = statistics.median(times["explain alone"])
        for m, ts in times.items():
            med = statistics.median(ts)
            print(f"{m:<22} {n / med:>9.0f} samples/s   store share {1 - base / med:>6.1%}   "
                  f"CPU {statistics.median(cpu[m]) * 1e3 / n * 1000:>6.0f} ms/1000 samples   "
                  f"(runs {', '.join(f'{n / t:.0f}' for t in ts)})")
        R = np.concatenate(explain_alone())
        for kind in ("zarr", "npy"):
            ts = [store_alone(ex, x, R, chunk, os.path.join(tmp, f"alone.{kind}")) for _ in range(args.repeats)]
            wall, cpu_s = (statistics.median(t[i] for t in ts) for i in (0, 1))
            print(f"store alone {kind:<10} {n / wall:>9.0f} samples/s   (no explaining)     "
                  f"CPU {cpu_s * 1e6 / n:>6.0f} ms/1000 samples")
        if args.codecs:
            time_codecs(R, bs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
