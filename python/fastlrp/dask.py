"""Scale explain out with Dask: one task per stored chunk, written straight to zarr.

:func:`explain_dask` explains a dask array (or a zarr array / store path, or a
NumPy array) on a ``dask.distributed`` cluster. Every worker thread builds its
:class:`~fastlrp.explain.Explainer` once -- from the saved graph file (a path
every worker can read) or from a :class:`~fastlrp.graph.Graph` broadcast to the
workers once -- and the composite spec, then reuses it for all its chunks. Each
task writes its chunk into the zarr store and then its done marker, exactly as
:func:`fastlrp.dataset.explain_dataset` does, so the two write the same store
format, a store can be resumed by either, and an interrupted run continues with
the missing chunks only.

Needs ``dask[distributed]`` and zarr (``pip install 'fastlrp[dask]'``). The store
must be on a filesystem every worker can write to.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Optional

import numpy as np

from .dataset import (
    DatasetResult,
    NonFiniteSamplesWarning,
    Progress,
    StoreDamageWarning,
    auto_batch_size,
    changed_error,
    chunk_hash,
    damaged_message,
    default_chunk_size,
    explain_chunk,
    open_store,
    run_meta,
)
from .explain import Explainer
from .graph import Graph
from .targets import InputError, parse_target

__all__ = ["explain_dask", "worker_explainer"]

_CACHE: dict = {}
_LOCK = threading.Lock()
#: how many Explainers this process has built (tests check each worker builds one)
BUILDS = {"count": 0}


def worker_explainer(model, model_key: str, composite, backend: str) -> Explainer:
    """The Explainer of the calling worker thread, built on first use and cached.

    ``model`` is a graph file path or a Graph; ``model_key`` identifies it.
    """
    key = (model_key, composite if isinstance(composite, str) else repr(composite), backend, threading.get_ident())
    with _LOCK:
        ex = _CACHE.get(key)
    if ex is None:
        graph = Graph.load(model) if isinstance(model, (str, os.PathLike)) else model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # backend fallback note, once per worker
            ex = Explainer(graph, composite, backend=backend)
        with _LOCK:
            _CACHE[key] = ex
            BUILDS["count"] += 1
    return ex


def _chunk_task(x, c, model, model_key, composite, backend, store_path, meta, targets, batch_size, nonfinite):
    """Explain chunk ``c`` (``targets``: the specification for its rows) and write it
    (data, checksum, then the done marker). Returns (c, n, bad indices)."""
    ex = worker_explainer(model, model_key, composite, backend)
    x = np.asarray(x)
    res = explain_chunk(ex, x, targets, start=c * int(meta["chunk_size"]), nonfinite=nonfinite,
                        batch_size=batch_size)
    store = open_store(store_path, meta)
    store.write_chunk(c, res.relevance, res.output, res.target, res.valid, chunk_hash(x))
    return c, int(x.shape[0]), res.nonfinite.tolist()


def _check_task(x, c, store_path, meta, done, checksum):
    """Chunk ``c``, marked done, against its input ``x``: (c, "ok" / "damaged" / "changed")."""
    return c, open_store(store_path, meta).check(c, done, checksum, np.asarray(x))


def _results(client, tasks):
    """The results of the delayed ``tasks`` as they finish (on ``client``, else dask's threads)."""
    import dask

    if not tasks:
        return
    if client is None:
        yield from dask.compute(*tasks, scheduler="threads")
        return
    from distributed import as_completed

    futures = client.compute(tasks)
    try:
        for fut in as_completed(futures):
            yield fut.result()
    except BaseException:
        client.cancel(futures)
        raise


def _as_dask_array(source, key, chunk):
    import dask.array as da

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.lower().endswith(".npy"):
            arr = da.from_array(np.load(path, mmap_mode="r"), chunks=chunk)
        else:
            import zarr

            obj = zarr.open(path, mode="r")
            if not hasattr(obj, "shape"):
                obj = obj[key or "x"]
            arr = da.from_zarr(obj)
    elif isinstance(source, da.Array):
        arr = source
    else:
        if hasattr(source, "keys") and key is not None:
            source = source[key]
        arr = da.from_array(source, chunks=chunk) if not hasattr(source, "chunks") or isinstance(
            source, np.ndarray) else da.from_array(source)
    return arr


def explain_dask(
    model,
    source,
    out,
    composite="epsilon_plus",
    target=None,
    *,
    backend: str = "auto",
    client=None,
    key: Optional[str] = None,
    chunk_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    memory_budget=None,
    nonfinite: str = "skip",
    overwrite: bool = False,
    quiet: bool = False,
    dtype=None,
) -> DatasetResult:
    """Explain every sample of a dask array into a zarr relevance store.

    Parameters
    ----------
    model : str or Graph
        A fastlrp graph ``.npz`` every worker can read, or a Graph (sent to each
        worker once).
    source : dask array, zarr array, zarr/.npy path, or NumPy array
        Samples along axis 0; rechunked to the store's chunks along axis 0 (and
        one chunk along the other axes).
    out : path
        The zarr store (shared by the workers).
    composite : str or Composite
        As for :class:`Explainer` (a name such as ``"epsilon_plus_flat"``).
    target : None, int, "all", int array (N,) / (N, K), float seed array
        As for :func:`fastlrp.dataset.explain_dataset` (not ``"label"``).
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``), or else dask's
        local threaded scheduler.
    chunk_size, batch_size, memory_budget, nonfinite, overwrite, quiet, dtype
        As for :func:`~fastlrp.dataset.explain_dataset`; one task per chunk.
    """
    import dask

    t0 = time.perf_counter()
    out = os.fspath(out)
    if out.lower().endswith(".npy"):
        raise InputError("explain_dask writes zarr stores only: give an output path not ending in .npy")
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
    if isinstance(model, (str, os.PathLike)):
        model = os.path.abspath(os.fspath(model))
        graph = Graph.load(model)
    elif isinstance(model, Graph):
        graph = model
    else:
        raise TypeError(f"model must be a graph file path or a fastlrp Graph, got {type(model).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        local = Explainer(graph, composite, backend=backend)
    comp_spec = composite if isinstance(composite, str) else local.composite

    # shape checks before anything is written
    x = _as_dask_array(source, key, "auto")
    want = local.sample_shape
    if tuple(x.shape[1:]) != want:
        raise InputError(f"the data's samples have shape {tuple(x.shape[1:])} but the model expects {want}")
    n = int(x.shape[0])
    targets = parse_target(target, graph.output_shape, n)
    if targets.kind == "label":
        raise InputError("target='label' is not available with explain_dask: pass the labels as an int array")
    if batch_size is None:
        batch_size = auto_batch_size(local, targets.k, memory_budget)
    C = int(chunk_size) if chunk_size else default_chunk_size(local, targets.k, int(batch_size))
    dt = np.dtype(dtype) if dtype is not None else np.dtype(local.dtype)
    meta = run_meta(local, targets, n, C, dt)
    store = open_store(out, meta, overwrite=overwrite)
    C = store.chunk
    meta = dict(store.meta)
    x = x.rechunk((C,) + tuple(-1 for _ in x.shape[1:]))
    flags, sums = store.done_flags(), store.checksums()
    n_chunks = -(-n // C) if n else 0
    finished = [c for c in range(n_chunks) if flags[c]]

    if client is None:
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):
            client = None
    model_key = graph.fingerprint() if not isinstance(model, str) else f"{model}:{meta['graph_fingerprint']}"
    model_arg = model
    if client is not None and not isinstance(model, str):
        [model_arg] = client.scatter([graph], broadcast=True, hash=False)
    blocks = x.to_delayed().ravel()

    # every finished chunk against the source and its checksum, before anything is computed
    states = dict(_results(client, [dask.delayed(_check_task, pure=False)(
        blocks[c], c, out, meta, int(flags[c]), int(sums[c])) for c in finished]))
    spans = {c: (c, c * C, min(n, (c + 1) * C)) for c in finished}
    changed = [spans[c] for c in finished if states[c] == "changed"]
    if changed:
        raise changed_error(out, changed)
    damaged = [spans[c] for c in finished if states[c] == "damaged"]
    todo = [c for c in range(n_chunks) if not flags[c] or states[c] == "damaged"]
    reused = n_chunks - len(todo)

    tasks = [dask.delayed(_chunk_task, pure=False)(  # only its chunk's target rows travel with a task
        blocks[c], c, model_arg, model_key, comp_spec, backend, out, meta, targets.select(slice(c * C, (c + 1) * C)),
        int(batch_size), nonfinite) for c in todo]

    prog = Progress(n, n - sum(min(C, n - c * C) for c in todo), quiet, "explain (dask)")
    bad_all, computed = [], 0
    try:
        for c, k, bad in _results(client, tasks):
            computed += k
            bad_all.extend(bad)
            prog.update(k)
    finally:
        prog.close()
    store = open_store(out, meta)
    all_done = bool(np.count_nonzero(store.done_flags()[:n_chunks]) == n_chunks)
    store.set_meta(complete=all_done, n_samples=n)
    res = DatasetResult.from_store(store, n, computed, len(todo), reused, time.perf_counter() - t0,
                                   damaged=[c for c, _, _ in damaged])
    if damaged:
        warnings.warn(damaged_message(out, damaged), StoreDamageWarning, stacklevel=2)
    if bad_all:
        bad_all.sort()
        warnings.warn(f"{len(bad_all)} sample(s) with NaN or Inf values were skipped (relevance NaN, valid=0): "
                      f"{bad_all[:20]}{' ...' if len(bad_all) > 20 else ''}", NonFiniteSamplesWarning, stacklevel=2)
    return res
