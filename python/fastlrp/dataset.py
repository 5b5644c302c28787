"""Explain a whole dataset and keep the results: streaming, chunked, resumable.

:func:`explain_dataset` reads samples from a NumPy array (also a memory-mapped
``.npy``), a zarr or HDF5 array, a file path, or any iterable of batches (a
PyTorch ``DataLoader`` yielding ``(x, y)`` or ``x``), explains them chunk by
chunk and writes each finished chunk to a store:

- a **zarr** group (any ``out`` path not ending in ``.npy``)::

      relevance  (N, *input_shape) or (N, K, *input_shape)  one chunk = C samples
      output     (N, *output_shape)   the model's output (logits)
      target     (N,) or (N, K) int64 the explained output index (-1: a given seed, or skipped)
      valid      (N,) uint8           1 = explained, 0 = skipped (NaN/Inf in the input or output)
      done       (n_chunks,) uint64   per-chunk done marker (0 = not done), chunked one per file

  and the group attribute ``"fastlrp"`` (graph fingerprint, composite, target
  spec, shapes, ...);
- a set of **.npy** memory maps (``out`` ends in ``.npy``): ``out`` holds the
  relevance, ``<stem>.output.npy``, ``<stem>.target.npy``, ``<stem>.valid.npy``,
  ``<stem>.done.npy`` the rest and ``<stem>.json`` the metadata. Needs the number
  of samples in advance.

Resuming. A chunk's done marker is written only after all of its data has been
written (zarr writes each chunk file atomically; memory maps are flushed first),
so a run killed at any moment leaves every chunk either marked and complete, or
unmarked and recomputed by the next run. Running the same call again computes
only the unmarked chunks. The marker is a 64-bit hash of the chunk's input
values: when a store is resumed from an iterable, the chunks already done are
checked against the data the iterable yields again (a shuffled DataLoader is
refused, not silently mixed). A store made for another model (graph
fingerprint), composite, target specification or number of samples is refused
with :class:`StoreMismatchError` (``overwrite=True`` replaces it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .targets import InputError, TargetSpec, as_numpy, parse_target

__all__ = [
    "ChunkResult",
    "DatasetResult",
    "InputError",
    "NonFiniteSamplesWarning",
    "Progress",
    "StoreMismatchError",
    "auto_batch_size",
    "chunk_hash",
    "default_chunk_size",
    "explain_chunk",
    "explain_dataset",
    "load_store",
    "open_source",
    "open_store",
    "run_meta",
]

STORE_FORMAT = "fastlrp.relevance"
STORE_VERSION = 1
#: target for a relevance chunk: a few tens of MB keeps zarr efficient
_CHUNK_BYTES = 32 * 2**20


class StoreMismatchError(ValueError):
    """An existing output store was made for another model, composite, target or dataset."""


class NonFiniteSamplesWarning(RuntimeWarning):
    """Some samples had NaN/Inf values and were skipped (their relevance is NaN, ``valid`` is 0)."""


# ------------------------------------------------------------------------------------------
# small helpers


def parse_bytes(value) -> int:
    """``1073741824``, ``"512MB"``, ``"2GiB"``, ``"1.5G"`` -> bytes."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        return int(value)
    s = str(value).strip().upper().replace(" ", "")
    units = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
             "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}
    i = len(s)
    while i > 0 and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    num, unit = s[:i], s[i:]
    if not num or unit not in units:
        raise ValueError(f"cannot read a memory size from {value!r} (examples: 512MB, 2GiB)")
    return int(float(num) * units[unit])


def _physical_memory() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def auto_batch_size(explainer, n_targets: int = 1, memory_budget=None, maximum: int = 1024) -> int:
    """A batch size whose working memory fits ``memory_budget`` (bytes or ``"2GB"``).

    The default budget is a quarter of the physical memory, at most 2 GiB. The
    estimate counts every node's output three times (the activation, what the
    rule keeps from the forward pass, the relevance flowing back), plus the input,
    the output and one relevance map per target.
    """
    budget = parse_bytes(memory_budget)
    if budget is None:
        phys = _physical_memory()
        budget = min(2 * 2**30, phys // 4) if phys else 2**30
    item = np.dtype(explainer.dtype).itemsize
    acts = sum(int(np.prod(n.shape)) for n in explainer.nodes)
    n_in = int(np.prod(explainer.graph.input_shape))
    per_sample = item * (3 * acts + n_in * (2 + n_targets)) + 8 * int(np.prod(explainer.graph.output_shape))
    bs = int(budget // max(per_sample, 1))
    bs = max(1, min(bs, maximum))
    if bs >= 16:
        bs -= bs % 8
    return bs


def chunk_hash(x: np.ndarray) -> np.uint64:
    """A nonzero 64-bit hash of a chunk's input values (independent of the source dtype)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    h = hashlib.blake2b(a.tobytes(), digest_size=8)
    h.update(repr(a.shape).encode())
    return np.uint64(int.from_bytes(h.digest(), "little") | 1)


def composite_id(explainer) -> str:
    """A hash of the rule every node gets (parameters and array parameters included)."""
    h = hashlib.sha256()
    for name in sorted(explainer.rules):
        rule = explainer.rules[name]
        h.update(f"{name}={rule}".encode())
        try:
            for k, v in sorted(rule.params().items()):
                if isinstance(v, np.ndarray):
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
        except AttributeError:
            pass
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------
# explaining rows


@dataclass
class ChunkResult:
    """What :func:`explain_chunk` computed for n samples, laid out as a store holds it.

    ``relevance`` (n, K, *sample_shape), ``output`` (n, *output_shape), ``target``
    (n, K) int64 (-1: given seed relevance, or skipped), ``valid`` (n,) uint8,
    ``nonfinite``: the dataset indices of the samples skipped for NaN/Inf.
    """

    relevance: np.ndarray
    output: np.ndarray
    target: np.ndarray
    valid: np.ndarray
    nonfinite: np.ndarray


def explain_chunk(explainer, x, targets: TargetSpec, *, y=None, start: int = 0, nonfinite: str = "skip",
                  batch_size: Optional[int] = None) -> ChunkResult:
    """Explain the samples ``x`` (those from ``start`` on of a dataset) in batches
    of at most ``batch_size`` with :meth:`Explainer.explain_batch
    <fastlrp.Explainer.explain_batch>`. ``targets`` is the specification for
    these rows (:meth:`TargetSpec.select <fastlrp.targets.TargetSpec.select>` of
    the dataset's); ``y`` their labels for ``target='label'``. ``nonfinite``: skip
    samples with NaN/Inf input or output, or raise :class:`InputError` naming them."""
    n = x.shape[0]
    bs = n if batch_size is None else max(1, int(batch_size))
    parts = [_explain_rows(explainer, x[a:a + bs], targets.select(slice(a, a + bs)),
                           None if y is None else y[a:a + bs], start + a, nonfinite)
             for a in range(0, n, bs)]
    if len(parts) == 1:
        return parts[0]
    return ChunkResult(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("relevance", "output", "target", "valid", "nonfinite")))


def _explain_rows(explainer, x, targets, y, start, nonfinite):
    n = x.shape[0]
    if nonfinite == "raise" and (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating)):
        bad = np.flatnonzero(~np.isfinite(x.reshape(n, -1)).all(axis=1)) + start
        if bad.size:
            raise InputError(f"samples with NaN or Inf values: {bad[:20].tolist()}{' ...' if len(bad) > 20 else ''} "
                             "(pass nonfinite='skip' to skip them)")
    if targets.kind == "label":
        targets = targets.with_labels(y)
    res = explainer.explain_batch(x, targets, nonfinite="skip")
    bad = np.flatnonzero(~res.valid) + start
    if bad.size and nonfinite == "raise":
        raise InputError(f"the model's output is NaN or Inf for samples {bad[:20].tolist()} "
                         "(pass nonfinite='skip' to skip them)")
    R = res.relevance if targets.multi else res.relevance[:, None]
    T = np.full((n, targets.k), -1, dtype=np.int64) if res.targets is None else res.targets.reshape(n, -1)
    return ChunkResult(R, res.output, T, res.valid.astype(np.uint8), bad)


# ------------------------------------------------------------------------------------------
# sources


class _ArraySource:
    """Random access: anything with ``shape`` and slicing (NumPy, memmap, zarr, h5py, dask)."""

    random_access = True

    def __init__(self, array, closer=None, name=""):
        self.array = array
        self.n = int(array.shape[0])
        self.sample_shape = tuple(int(s) for s in array.shape[1:])
        self.closer = closer
        self.name = name

    def read(self, a: int, b: int) -> np.ndarray:
        return as_numpy(self.array[a:b])

    def close(self):
        if self.closer is not None:
            self.closer()


class _IterSource:
    """An iterable of batches ``x`` or ``(x, y)``; re-iterated from the start on resume."""

    random_access = False

    def __init__(self, iterable, n_samples=None):
        self.iterable = iterable
        self.n = n_samples
        if self.n is None:
            ds, bs = getattr(iterable, "dataset", None), getattr(iterable, "batch_size", None)
            if ds is not None and hasattr(ds, "__len__") and not getattr(iterable, "drop_last", False) \
                    and getattr(iterable, "batch_sampler", None) is not None and bs is not None:
                self.n = len(ds)
        self._it = None
        self._first = None
        self.sample_shape = None

    @staticmethod
    def _split(b):
        if isinstance(b, (tuple, list)):
            if len(b) == 0:
                raise InputError("the data source yielded an empty batch tuple")
            return as_numpy(b[0]), (b[1] if len(b) > 1 else None)
        if isinstance(b, dict):
            keys = [k for k in ("x", "input", "inputs", "image", "images", "data") if k in b]
            if not keys:
                raise InputError(f"cannot find the input in a batch dict with keys {list(b)} (use 'x')")
            y = next((b[k] for k in ("y", "label", "labels", "target", "targets") if k in b), None)
            return as_numpy(b[keys[0]]), y
        return as_numpy(b), None

    def peek(self):
        """Read the first batch (kept for the iteration) to learn the sample shape."""
        self._it = iter(self.iterable)
        try:
            first = next(self._it)
        except StopIteration:
            raise InputError("the data source is empty") from None
        self._first = self._split(first)
        x = self._first[0]
        if x.ndim == 0:
            raise InputError("the data source must yield batches (arrays with a batch axis)")
        self.sample_shape = tuple(x.shape[1:])
        return self._first

    def chunks(self, size: int):
        """Yield (x, y) pieces of exactly ``size`` samples (the last may be shorter);
        ``y`` is None unless every batch came with labels."""
        it = itertools.chain([self._first], (self._split(b) for b in self._it))
        xs, ys, have, labelled = [], [], 0, True

        def take(k):
            X = np.concatenate(xs) if len(xs) > 1 else xs[0]
            Y = (np.concatenate(ys) if len(ys) > 1 else ys[0]) if labelled else None
            xs[:] = [X[k:]] if X.shape[0] > k else []
            ys[:] = [Y[k:]] if labelled and X.shape[0] > k else []
            return X[:k], (None if Y is None else Y[:k])

        for x, y in it:
            if x.ndim == 0 or tuple(x.shape[1:]) != self.sample_shape:
                raise InputError(f"batch with samples of shape {tuple(x.shape[1:])}, earlier batches had "
                                 f"{self.sample_shape}")
            if y is None:
                labelled = False
                ys = []
            elif labelled:
                y = as_numpy(y)
                if y.shape[:1] != x.shape[:1]:
                    raise InputError(f"a batch has {x.shape[0]} samples but {y.shape[0] if y.ndim else 0} labels")
                ys.append(y)
            xs.append(x)
            have += x.shape[0]
            while have >= size:
                yield take(size)
                have -= size
        if have:
            yield take(have)

    def close(self):
        pass


def open_source(source, key: Optional[str] = None, n_samples: Optional[int] = None):
    """Wrap a data source: an array-like, a path (``.npy``, ``.npz``, ``.zarr``,
    ``.h5``/``.hdf5``) or an iterable of batches. ``key`` names the array inside an
    ``.npz``, zarr group or HDF5 file (default: ``x``, or the only array)."""
    if isinstance(source, (_ArraySource, _IterSource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.fspath(source), key)
    if isinstance(source, np.ndarray) or (hasattr(source, "shape") and hasattr(source, "__getitem__")
                                          and hasattr(source, "dtype") and len(getattr(source, "shape", ())) >= 1):
        if key is not None and hasattr(source, "keys"):
            source = source[key]
        if hasattr(source, "detach"):  # a torch tensor: slicing works but convert once
            source = as_numpy(source)
        return _ArraySource(source)
    if hasattr(source, "keys") and hasattr(source, "__getitem__"):  # zarr group / h5py group / npz
        return _ArraySource(_pick_array(source, key, "the data"))
    if hasattr(source, "__iter__"):
        return _IterSource(source, n_samples)
    raise InputError(f"cannot read samples from a {type(source).__name__}: give an array, a file path or an "
                     "iterable of batches")


def _pick_array(container, key, where):
    keys = list(container.keys())
    if key is not None:
        if key not in keys:
            raise InputError(f"{where} has no array '{key}' (it has: {', '.join(map(str, keys))})")
        return container[key]
    for k in ("x", "X", "data", "inputs", "images"):
        if k in keys:
            return container[k]
    if len(keys) == 1:
        return container[keys[0]]
    raise InputError(f"{where} holds several arrays ({', '.join(map(str, keys))}): say which with key=")


def _open_path(path: str, key):
    if not os.path.exists(path):
        raise InputError(f"data file not found: {path}")
    low = path.lower().rstrip("/")
    if low.endswith(".npy"):
        return _ArraySource(np.load(path, mmap_mode="r", allow_pickle=False), name=path)
    if low.endswith(".npz"):
        z = np.load(path, allow_pickle=False)
        return _ArraySource(np.asarray(_pick_array(z, key, path)), closer=z.close, name=path)
    if low.endswith((".h5", ".hdf5", ".hdf", ".he5")):
        try:
            import h5py
        except ImportError as e:
            raise ImportError("reading HDF5 files needs h5py: pip install 'fastlrp[dataset]'") from e
        f = h5py.File(path, "r")
        try:
            obj = f[key] if key is not None else None
            if obj is None:
                arrays = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}
                obj = _pick_array(arrays, None, path)
        except KeyError:
            f.close()
            raise InputError(f"{path} has no dataset '{key}' (it has: {', '.join(f.keys())})") from None
        except Exception:
            f.close()
            raise
        return _ArraySource(obj, closer=f.close, name=path)
    if low.endswith(".zarr") or os.path.isdir(path):
        zarr = _import_zarr()
        obj = zarr.open(path, mode="r")
        if hasattr(obj, "shape"):
            return _ArraySource(obj, name=path)
        return _ArraySource(_pick_array(obj, key, path), name=path)
    raise InputError(f"unknown data file type: {path} (use .npy, .npz, .zarr, .h5/.hdf5)")


def _import_zarr():
    try:
        import zarr
    except ImportError as e:
        raise ImportError("zarr stores need zarr: pip install 'fastlrp[dataset]' (or write to a .npy path)") from e
    return zarr


# ------------------------------------------------------------------------------------------
# stores


def _zarr_create(group, name, shape, chunks, dtype, fill_value):
    if hasattr(group, "create_array"):  # zarr >= 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                  overwrite=True)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,  # zarr 2
                                overwrite=True)


_NAMES = ("relevance", "output", "target", "valid", "done")


class _Store:
    """A relevance store (zarr group or .npy memory maps) with per-chunk done markers."""

    def __init__(self, kind, path, meta, arrays, group=None):
        self.kind, self.path, self.meta, self.group = kind, path, meta, group
        self.relevance, self.output, self.target, self.valid, self.done = (arrays[k] for k in _NAMES)
        self.chunk = int(meta["chunk_size"])
        self.multi = bool(meta["multi_target"])

    # -- layout ------------------------------------------------------------------------
    @property
    def n(self):
        return int(self.relevance.shape[0])

    def done_flags(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=np.uint64)

    def ensure_length(self, n: int):
        """Grow the arrays to ``n`` samples (zarr stores of unknown length)."""
        if n <= self.n:
            return
        if self.kind != "zarr":
            raise InputError(f"the .npy store at {self.path} holds {self.n} samples; the data has more")
        for arr in (self.relevance, self.output, self.target, self.valid):
            arr.resize((n,) + tuple(arr.shape[1:]))
        nc = -(-n // self.chunk)
        if nc > self.done.shape[0]:
            self.done.resize((nc,))

    def write(self, c: int, R, O, T, valid):
        a = c * self.chunk
        b = a + R.shape[0]
        self.relevance[a:b] = R if self.multi else R[:, 0]
        self.output[a:b] = O
        self.target[a:b] = T if self.multi else T[:, 0]
        self.valid[a:b] = valid
        if self.kind == "npy":
            for arr in (self.relevance, self.output, self.target, self.valid):
                arr.flush()

    def mark_done(self, c: int, h: np.uint64):
        self.done[c] = h
        if self.kind == "npy":
            self.done.flush()

    def set_meta(self, **kw):
        self.meta.update(kw)
        if self.kind == "zarr":
            self.group.attrs["fastlrp"] = self.meta
        else:
            _write_json(_npy_paths(self.path)["meta"], self.meta)

    def close(self):
        if self.kind == "npy":
            for arr in (self.relevance, self.output, self.target, self.valid, self.done):
                arr.flush()


def _npy_paths(path: str) -> dict:
    stem = path[:-4]
    return {"relevance": path, "output": stem + ".output.npy", "target": stem + ".target.npy",
            "valid": stem + ".valid.npy", "done": stem + ".done.npy", "meta": stem + ".json"}


def _write_json(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _store_kind(path: str) -> str:
    return "npy" if str(path).lower().endswith(".npy") else "zarr"


def _read_meta(path: str) -> Optional[dict]:
    """The metadata of an existing store at ``path``; None when nothing is there;
    raises StoreMismatchError for something that is not a fastlrp store."""
    if _store_kind(path) == "npy":
        p = _npy_paths(path)
        if os.path.exists(p["meta"]):
            with open(p["meta"]) as f:
                meta = json.load(f)
        elif os.path.exists(path):
            raise StoreMismatchError(f"{path} exists but is not a fastlrp relevance store (no {p['meta']}); "
                                     "pass overwrite=True to replace it")
        else:
            return None
    else:
        if not os.path.exists(path):
            return None
        if os.path.isdir(path) and not os.listdir(path):
            return None
        zarr = _import_zarr()
        try:
            g = zarr.open_group(path, mode="r")
            meta = dict(g.attrs).get("fastlrp")
        except Exception:  # noqa: BLE001 - not a zarr group at all
            meta = None
        if meta is None:
            raise StoreMismatchError(f"{path} exists but is not a fastlrp relevance store; "
                                     "pass overwrite=True to replace it, or choose another path")
    if meta.get("format") != STORE_FORMAT:
        raise StoreMismatchError(f"{path} is not a fastlrp relevance store")
    if meta.get("version", 0) > STORE_VERSION:
        raise StoreMismatchError(f"{path}: store format version {meta['version']} is newer than this fastlrp supports")
    return meta


def _remove_store(path: str):
    if _store_kind(path) == "npy":
        for p in _npy_paths(path).values():
            if os.path.exists(p):
                os.remove(p)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _check_meta(path, old: dict, new: dict):
    checks = [
        ("graph_fingerprint", "model (graph fingerprint)"),
        ("composite", "composite"),
        ("composite_id", "composite"),
        ("target_spec", "target specification"),
        ("input_shape", "input shape"),
        ("output_shape", "output shape"),
        ("n_targets", "number of targets"),
        ("dtype", "relevance dtype"),
    ]
    for key, what in checks:
        a, b = old.get(key), new.get(key)
        if key in ("input_shape", "output_shape"):
            a, b = list(a or []), list(b or [])
        if a != b:
            extra = ""
            if key == "composite_id":
                a, b = f"{old.get('composite')} [{a}]", f"{new.get('composite')} [{b}]"
            elif key == "graph_fingerprint":
                a, b = f"{old.get('model')} [{str(a)[:12]}]", f"{new.get('model')} [{str(b)[:12]}]"
            raise StoreMismatchError(
                f"the store at {path} was made for another {what}: {a} (store) vs {b} (this call){extra}; "
                "it is not appended to. Use another output path, or overwrite=True to replace it")
    if old.get("n_samples") is not None and new.get("n_samples") is not None and old["n_samples"] != new["n_samples"]:
        raise StoreMismatchError(f"the store at {path} holds {old['n_samples']} samples, the data has "
                                 f"{new['n_samples']}; use another output path or overwrite=True")


def open_store(path: str, meta: dict, overwrite: bool = False) -> _Store:
    """Open the store at ``path`` for the run described by ``meta`` (checking it
    matches), or create it. ``meta['n_samples']`` may be None (zarr only)."""
    path = os.fspath(path)
    kind = _store_kind(path)
    if overwrite:
        _remove_store(path)
        old = None
    else:
        old = _read_meta(path)
    if old is not None:
        _check_meta(path, old, meta)
        merged = dict(old)
        if merged.get("n_samples") is None and meta.get("n_samples") is not None:
            merged["n_samples"] = meta["n_samples"]
        return _open_existing(kind, path, merged)
    try:
        return _create(kind, path, meta)
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, OSError) as e:
        raise OSError(f"cannot write the relevance store at {path}: {e}") from e


def _shapes(meta, n):
    in_shape, out_shape = tuple(meta["input_shape"]), tuple(meta["output_shape"])
    K = int(meta["n_targets"])
    rel = (n, K) + in_shape if meta["multi_target"] else (n,) + in_shape
    tgt = (n, K) if meta["multi_target"] else (n,)
    return {"relevance": rel, "output": (n,) + out_shape, "target": tgt, "valid": (n,)}


def _create(kind, path, meta) -> _Store:
    n = meta["n_samples"]
    C = int(meta["chunk_size"])
    dt = np.dtype(meta["dtype"])
    if kind == "npy":
        if n is None:
            raise InputError("a .npy store needs the number of samples in advance: give n_samples=, or write to "
                             "a zarr store (an output path not ending in .npy)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"directory {parent} does not exist")
        p = _npy_paths(path)
        shapes = _shapes(meta, n)
        arrays = {}
        dtypes = {"relevance": dt, "output": dt, "target": np.int64, "valid": np.uint8}
        fills = {"relevance": np.nan, "output": np.nan, "target": -1, "valid": 0}
        for k in ("relevance", "output", "target", "valid"):
            a = np.lib.format.open_memmap(p[k], mode="w+", dtype=dtypes[k], shape=shapes[k])
            a[...] = fills[k]
            arrays[k] = a
        arrays["done"] = np.lib.format.open_memmap(p["done"], mode="w+", dtype=np.uint64, shape=(-(-n // C),))
        for a in arrays.values():
            a.flush()
        _write_json(p["meta"], meta)  # last: its presence means the store is initialised
        return _Store(kind, path, dict(meta), arrays)
    zarr = _import_zarr()
    os.makedirs(path, exist_ok=True)  # a plain OSError when the place is not writable (zarr 2 says KeyError)
    g = zarr.open_group(path, mode="a")
    n0 = 0 if n is None else n
    shapes = _shapes(meta, n0)
    arrays = {}
    arrays["relevance"] = _zarr_create(g, "relevance", shapes["relevance"], (C,) + shapes["relevance"][1:], dt, np.nan)
    arrays["output"] = _zarr_create(g, "output", shapes["output"], (C,) + shapes["output"][1:], dt, np.nan)
    arrays["target"] = _zarr_create(g, "target", shapes["target"], (C,) + shapes["target"][1:], np.int64, -1)
    arrays["valid"] = _zarr_create(g, "valid", (n0,), (C,), np.uint8, 0)
    arrays["done"] = _zarr_create(g, "done", (-(-n0 // C),), (1,), np.uint64, 0)
    g.attrs["fastlrp"] = meta  # last: its presence means the store is initialised
    return _Store(kind, path, dict(meta), arrays, group=g)


def _open_existing(kind, path, meta) -> _Store:
    if kind == "npy":
        p = _npy_paths(path)
        arrays = {k: np.lib.format.open_memmap(p[k], mode="r+") for k in _NAMES}
        return _Store(kind, path, meta, arrays)
    zarr = _import_zarr()
    g = zarr.open_group(path, mode="r+")
    arrays = {k: g[k] for k in _NAMES}
    return _Store(kind, path, meta, arrays, group=g)


def load_store(path: str) -> dict:
    """Open a finished (or partial) store read-only: a dict with the arrays
    ``relevance``, ``output``, ``target``, ``valid``, ``done`` (zarr arrays or
    memory maps) and ``meta``."""
    path = os.fspath(path)
    meta = _read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"no relevance store at {path}")
    if _store_kind(path) == "npy":
        p = _npy_paths(path)
        d = {k: np.load(p[k], mmap_mode="r") for k in _NAMES}
    else:
        g = _import_zarr().open_group(path, mode="r")
        d = {k: g[k] for k in _NAMES}
    d["meta"] = meta
    return d


# ------------------------------------------------------------------------------------------
# progress


class Progress:
    """A progress bar on stderr (tqdm when installed, else a line every 2 s); nothing when ``quiet``."""

    def __init__(self, total, initial, quiet, desc):
        self.bar = None
        self.quiet = quiet
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, initial=initial, unit="sample", unit_scale=bool(total is None or total >= 10000), desc=desc,
                            dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
        else:
            self.t0, self.n, self.total, self.last, self.desc = time.perf_counter(), initial, total, 0.0, desc
            self.initial = initial

    def update(self, k):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(k)
            return
        self.n += k
        now = time.perf_counter()
        if now - self.last > 2.0 or (self.total and self.n >= self.total):
            self.last = now
            rate = (self.n - self.initial) / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if self.total and rate > 0 else float("nan")
            print(f"{self.desc}: {self.n}/{self.total or '?'} samples, {rate:.1f} samples/s, ETA {eta:.0f} s",
                  file=sys.stderr)

    def write(self, msg):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------
# the run


@dataclass
class DatasetResult:
    """What :func:`explain_dataset` did.

    ``computed`` / ``computed_chunks``: samples / chunks explained by this call;
    ``reused_chunks``: chunks found done; ``nonfinite``: indices of all samples
    skipped for NaN/Inf (over the whole store); ``samples_per_s``: throughput of
    this call (computed samples / seconds).
    """

    path: str
    n_samples: int
    chunk_size: int
    computed: int
    computed_chunks: int
    reused_chunks: int
    seconds: float
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    meta: dict = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def from_store(cls, store, n, computed, computed_chunks, reused, seconds) -> "DatasetResult":
        """The result of a run that computed ``computed`` samples (``computed_chunks``
        chunks) of the ``n`` in ``store`` and found ``reused`` chunks done."""
        valid = np.asarray(store.valid[:n]) if n else np.zeros(0, np.uint8)
        C = store.chunk
        done_rows = np.zeros(n or 0, dtype=bool)
        for c in np.flatnonzero(store.done_flags()):
            done_rows[c * C:(c + 1) * C] = True
        bad = np.flatnonzero(done_rows & (valid == 0))
        return cls(path=store.path, n_samples=int(n or 0), chunk_size=C, computed=computed,
                   computed_chunks=computed_chunks, reused_chunks=reused, seconds=seconds, nonfinite=bad,
                   meta=dict(store.meta))

    def load(self) -> dict:
        """The store's arrays (see :func:`load_store`)."""
        return load_store(self.path)

    def __repr__(self):
        return (f"DatasetResult({self.path!r}, {self.n_samples} samples, computed {self.computed} "
                f"({self.computed_chunks} chunks, {self.reused_chunks} reused) in {self.seconds:.2f} s, "
                f"{len(self.nonfinite)} skipped)")


def run_meta(explainer, targets: TargetSpec, n_samples, chunk_size, dtype) -> dict:
    """The metadata of a store for this explainer, target specification, number of
    samples, chunk size and stored dtype (what a resumed run must match)."""
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "graph_fingerprint": explainer.graph.fingerprint(),
        "model": str(explainer.graph.meta.get("name", "")),
        "composite": explainer.composite.name,
        "composite_id": composite_id(explainer),
        "composite_rules": {k: str(v) for k, v in explainer.rules.items()},
        "backend": getattr(explainer.backend, "name", type(explainer.backend).__name__),
        "target_spec": targets.key,
        "n_targets": int(targets.k),
        "multi_target": bool(targets.multi),
        "input_shape": list(explainer.sample_shape),
        "output_shape": list(explainer.graph.output_shape),
        "layout": "channels_last" if explainer.channels_last else "channels_first",
        "dtype": np.dtype(dtype).str,
        "n_samples": None if n_samples is None else int(n_samples),
        "chunk_size": int(chunk_size),
        "complete": False,
    }


def default_chunk_size(explainer, n_targets: int, batch_size: int) -> int:
    """Samples per stored chunk: the batch size, capped so that a relevance chunk
    stays near 32 MB."""
    per = np.dtype(explainer.dtype).itemsize * int(np.prod(explainer.graph.input_shape)) * n_targets
    return int(max(1, min(batch_size, _CHUNK_BYTES // max(per, 1))))


class _Writer:
    """Writes finished chunks (data, then the done marker) in a background thread,
    so that compression and disk I/O overlap the next chunk's compute."""

    def __init__(self, store: _Store, depth: int = 2):
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="fastlrp-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            c, R, O, T, V, h = item
            try:
                self.store.write(c, R, O, T, V)
                self.store.mark_done(c, h)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e

    def put(self, item):
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def finish(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def explain_dataset(
    explainer,
    source,
    out,
    target=None,
    batch_size: Optional[int] = None,
    *,
    key: Optional[str] = None,
    chunk_size: Optional[int] = None,
    memory_budget=None,
    nonfinite: str = "skip",
    overwrite: bool = False,
    n_samples: Optional[int] = None,
    quiet: bool = False,
    dtype=None,
) -> DatasetResult:
    """Explain every sample of ``source`` and write the relevance to ``out``.

    Parameters
    ----------
    explainer : Explainer
    source : array-like, path or iterable of batches
        A NumPy array or memory map, a zarr / HDF5 array, a file path (``.npy``,
        ``.npz``, ``.zarr``, ``.h5``; ``key`` names the array inside), or an
        iterable of batches ``x`` or ``(x, y)`` (for example a PyTorch
        ``DataLoader``; it must yield the same samples in the same order on every
        run, so no shuffling).
    out : path
        A zarr store (directory), or a ``.npy`` file for memory maps.
    target : None, int, "all", "label", int array (N,) or (N, K), float array
        ``None``: each sample's arg-max output; ``int``: that output;
        ``"all"``: every output (K = number of outputs); ``"label"``: the ``y``
        yielded with each batch; an int array: per-sample output(s); a float array
        ``(N, *output_shape)``: the seed relevance itself. Several targets add a K
        axis after the sample axis of ``relevance``. See :mod:`fastlrp.targets`.
    batch_size : int, optional
        Samples per explain call; default from ``memory_budget``.
    chunk_size : int, optional
        Samples per stored chunk (the unit of resuming); default: the batch size,
        capped so a relevance chunk stays near 32 MB. Fixed when the store is made.
    memory_budget : int or str, optional
        Working memory for choosing the batch size (``"2GB"``); default a quarter
        of the RAM, at most 2 GiB.
    nonfinite : "skip" or "raise"
        Samples with NaN/Inf input (or output) are skipped -- relevance and output
        NaN, target -1, ``valid`` 0, indices reported with a
        :class:`NonFiniteSamplesWarning` -- or raise :class:`InputError`.
    overwrite : bool
        Replace an existing store instead of resuming it.
    n_samples : int, optional
        Number of samples of an iterable source without a length (needed for .npy).
    quiet : bool
        No progress bar.
    dtype : optional
        Stored relevance/output dtype (default: the explainer's compute dtype).

    Returns
    -------
    DatasetResult
    """
    if not callable(getattr(explainer, "explain_batch", None)):
        raise TypeError(f"explain_dataset needs a fastlrp Explainer, got {type(explainer).__name__}")
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
    out = os.fspath(out)
    src = open_source(source, key=key, n_samples=n_samples)
    try:
        return _run(explainer, src, out, target, batch_size, chunk_size, memory_budget, nonfinite, overwrite,
                    n_samples, quiet, dtype)
    finally:
        if src is not source:
            src.close()


def _check_samples(explainer, sample_shape):
    want = explainer.sample_shape
    if tuple(sample_shape) != want:
        raise InputError(f"the data's samples have shape {tuple(sample_shape)} but the model "
                         f"'{explainer.graph.meta.get('name', '')}' expects {want}")


def _run(explainer, src, out, target, batch_size, chunk_size, memory_budget, nonfinite, overwrite, n_samples, quiet,
         dtype):
    t_start = time.perf_counter()
    first_y = None
    if src.random_access:
        n = src.n if n_samples is None else min(int(n_samples), src.n)
    else:
        _, first_y = src.peek()
        n = src.n
    _check_samples(explainer, src.sample_shape)
    targets = parse_target(target, explainer.graph.output_shape, n)
    if targets.kind == "label":
        if src.random_access:
            raise InputError("target='label' needs an iterable yielding (x, y); for arrays pass the labels as target=")
        if first_y is None:
            raise InputError("target='label' needs a source yielding (x, y) batches; this one yields x only")
        targets = targets.labelled_like(first_y)
    if batch_size is None:
        batch_size = auto_batch_size(explainer, targets.k, memory_budget)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    C = int(chunk_size) if chunk_size else default_chunk_size(explainer, targets.k, batch_size)
    dt = np.dtype(dtype) if dtype is not None else np.dtype(explainer.dtype)
    meta = run_meta(explainer, targets, n, C, dt)
    store = open_store(out, meta, overwrite=overwrite)
    C = store.chunk  # an existing store keeps its chunking
    flags = store.done_flags()
    if n is not None:
        n_chunks = -(-n // C) if n else 0
        if flags.shape[0] < n_chunks:
            flags = np.concatenate([flags, np.zeros(n_chunks - flags.shape[0], np.uint64)])
    else:
        n_chunks = None
    if store.meta.get("complete") and n_chunks is None and store.meta.get("n_samples") is not None:
        n = int(store.meta["n_samples"])
        n_chunks = -(-n // C)
    done_before = int(np.count_nonzero(flags[:n_chunks] if n_chunks is not None else flags))
    reused = done_before
    if n_chunks is not None and done_before == n_chunks:
        # nothing to do; do not even read the source
        store.set_meta(complete=True, n_samples=n)
        store.close()
        return DatasetResult.from_store(store, n, 0, 0, reused, time.perf_counter() - t_start)

    initial = 0
    if n is not None:
        initial = sum(min(C, n - c * C) for c in np.flatnonzero(flags[:n_chunks]))
    else:
        initial = int(np.count_nonzero(flags)) * C
    prog = Progress(n, initial, quiet, "explain")
    group = max(1, batch_size // C)
    computed = computed_chunks = 0
    new_bad = []
    writer = _Writer(store)
    ok = False
    try:
        pending = []  # (c, x, y, hash)

        def flush():
            nonlocal computed, computed_chunks
            if not pending:
                return
            # consecutive chunks are explained together, others one by one
            if all(pending[i + 1][0] == pending[i][0] + 1 for i in range(len(pending) - 1)):
                xs, ys = [p[1] for p in pending], [p[2] for p in pending]
                X = np.concatenate(xs) if len(xs) > 1 else xs[0]
                Y = None if any(y is None for y in ys) else (np.concatenate(ys) if len(ys) > 1 else ys[0])
                runs = [(pending[0][0], X, Y, pending)]
            else:
                runs = [(p[0], p[1], p[2], [p]) for p in pending]
            parts = []  # (c, hash, the rows of chunk c: R, O, T, V)
            for c0, x, y, chunks in runs:
                a = c0 * C
                res = explain_chunk(explainer, x, targets.select(slice(a, a + x.shape[0])), y=y, start=a,
                                    nonfinite=nonfinite, batch_size=batch_size)
                r = 0
                for c, xc, _, h in chunks:
                    m = xc.shape[0]
                    parts.append((c, h, res.relevance[r:r + m], res.output[r:r + m], res.target[r:r + m],
                                  res.valid[r:r + m]))
                    r += m
            for c, h, R, O, T, V in parts:
                bad = np.flatnonzero(V == 0) + c * C
                if bad.size:
                    new_bad.extend(bad.tolist())
                    prog.write(f"fastlrp: skipped {bad.size} sample(s) with NaN/Inf: {bad[:10].tolist()}"
                               f"{' ...' if bad.size > 10 else ''}")
                writer.put((c, R.astype(dt, copy=False), O.astype(dt, copy=False), T, V, h))
                computed += R.shape[0]
                computed_chunks += 1
                prog.update(R.shape[0])
            pending.clear()

        if src.random_access:
            verified = False
            for c in range(n_chunks):
                a, b = c * C, min(n, (c + 1) * C)
                if flags[c]:
                    if not verified:  # one cheap check that this is the same data
                        _verify(src.read(a, b), flags[c], c, out)
                        verified = True
                    continue
                x = src.read(a, b)
                pending.append((c, x, None, chunk_hash(x)))
                if len(pending) >= group:
                    flush()
            flush()
            total = n
        else:
            total = 0
            for c, (x, y) in enumerate(src.chunks(C)):
                total += x.shape[0]
                if n is not None and total > n:
                    raise InputError(f"the data source yielded more than the {n} samples it announced")
                if c < flags.shape[0] and flags[c]:
                    _verify(x, flags[c], c, out)
                    continue
                if n is None:
                    store.ensure_length(total)
                pending.append((c, x, y, chunk_hash(x)))
                if len(pending) >= group:
                    flush()
            flush()
            if n is not None and total != n:
                raise InputError(f"the data source yielded {total} samples, expected {n}")
            n = total
        ok = True
    finally:
        try:
            writer.finish()
        finally:
            prog.close()
            if ok:
                store.set_meta(complete=bool(np.count_nonzero(store.done_flags()[: -(-n // C)]) == -(-n // C)),
                               n_samples=int(n))
            store.close()
    res = DatasetResult.from_store(store, n, computed, computed_chunks, reused, time.perf_counter() - t_start)
    if len(new_bad):
        warnings.warn(f"{len(new_bad)} sample(s) with NaN or Inf values were skipped (relevance NaN, valid=0): "
                      f"{new_bad[:20]}{' ...' if len(new_bad) > 20 else ''}", NonFiniteSamplesWarning, stacklevel=3)
    return res


def _verify(x, flag, c, out):
    if chunk_hash(x) != np.uint64(flag):
        raise StoreMismatchError(
            f"chunk {c} of the store at {out} was computed from different data than the source gives now "
            "(a different dataset, or an iterable that shuffles); use another output path or overwrite=True")
