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
      done       (n_chunks,) uint64   per chunk: hash of its input (0 = not done), one per file
      checksum   (n_chunks,) uint64   per chunk: hash of ``done`` and of the rows stored, one per file

  and the group attribute ``"fastlrp"`` (graph fingerprint, composite, target
  spec, shapes, ...);
- a set of **.npy** files (``out`` ends in ``.npy``): ``out`` holds the
  relevance, ``<stem>.output.npy``, ``<stem>.target.npy``, ``<stem>.valid.npy``,
  ``<stem>.done.npy``, ``<stem>.checksum.npy`` the rest and ``<stem>.json`` the
  metadata. Needs the number of samples in advance. The files are allocated to
  their full size when the store is made and written with file I/O (never
  through a memory map), so a full disk is an :class:`OSError` naming the file.

Resuming and integrity. A chunk's record -- ``checksum`` then ``done`` -- is
written after all of its rows, so a run killed at any moment leaves every chunk
either recorded or recomputed by the next run. Every run on an existing store
(a complete one included) checks every recorded chunk before computing
anything: its stored rows must read back and hash to its checksum (a deleted,
truncated or altered chunk file is recomputed, with a
:class:`StoreDamageWarning`), and its input hash must match the source's samples
(a changed source is refused with :class:`StoreMismatchError` naming the chunks
and samples; ``overwrite=True``, on the command line ``--overwrite``, recomputes
the store). For an iterable source the check happens as the iterable yields the
chunk again (a shuffled DataLoader is refused, not silently mixed). The
metadata are written atomically (temporary file, fsync, rename); a zarr store
is made in a temporary directory and renamed into place; the .npy store writes
its metadata first and remakes any array file that is missing or damaged. A
store made for another model (graph fingerprint), composite, target
specification or number of samples is refused with :class:`StoreMismatchError`.
:func:`verify_store` (``fastlrp verify``) checks a store end to end.

Speed. Finished chunks are hashed and written by a background thread while the next
chunks are explained; at most two wait for it (``put`` blocks), so the memory held
for writing is about three chunks of relevance and input. zarr arrays are compressed
with LZ4 (:func:`_zarr_create`). zarr (3.x) cost about 2-4 ms of CPU per array
write on a 2-vCPU Xeon VM, six writes per chunk (four data arrays, checksum, done): with chunks of a few
hundred KB that is several times the .npy store's cost (85-110 against 15 ms per 1000
samples of a 3x16x16 model at 256 samples per chunk), and a larger ``chunk_size``
spreads it (26-35 ms at 1024-2048 samples; bench/bench_dataset.py).
"""

from __future__ import annotations

import errno
import glob
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
    "StoreDamageWarning",
    "StoreMismatchError",
    "StoreReport",
    "auto_batch_size",
    "changed_error",
    "chunk_hash",
    "damaged_message",
    "default_chunk_size",
    "explain_chunk",
    "explain_dataset",
    "load_store",
    "open_source",
    "open_store",
    "run_meta",
    "stored_hash",
    "verify_store",
]

STORE_FORMAT = "fastlrp.relevance"
#: 2: per-chunk checksums of the stored rows (version 1 stores are refused: they cannot be verified)
STORE_VERSION = 2
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
    h = hashlib.sha256(a.reshape(-1).view(np.uint8))
    h.update(repr(a.shape).encode())
    return np.uint64(int.from_bytes(h.digest()[:8], "little") | 1)


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

#: how to say "replace the store" in both interfaces
OVERWRITE_HINT = "overwrite=True (command line: --overwrite)"


class StoreDamageWarning(RuntimeWarning):
    """A store's file or chunk was missing, truncated or altered; it is rebuilt / recomputed."""


def _zarr_create(group, name, shape, chunks, dtype, fill_value):
    """A store array, compressed with LZ4 in Blosc without shuffling: it encodes
    relevance at 1.3-1.9 GB/s on one core, zarr's default (Zstandard level 0) at 65-125
    MB/s; relevance with a Flat first layer shrinks to about a third with either, other
    relevance hardly compresses with any fast codec (0.9-1.0 of its size; measured with
    bench/bench_dataset.py --codecs). Stores made with another codec read as before."""
    if hasattr(group, "create_array"):  # zarr >= 3
        from zarr.codecs import BloscCodec

        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                  compressors=BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
                                  overwrite=True)
    from numcodecs import Blosc  # zarr 2

    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                compressor=Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE), overwrite=True)


_DATA = ("relevance", "output", "target", "valid")
_NAMES = _DATA + ("done", "checksum")


def _layout(meta, n) -> dict:
    """name -> (shape, dtype, rows per zarr chunk, fill value) of a store of ``n`` samples."""
    in_shape, out_shape = tuple(meta["input_shape"]), tuple(meta["output_shape"])
    K, C, dt = int(meta["n_targets"]), int(meta["chunk_size"]), np.dtype(meta["dtype"])
    multi = bool(meta["multi_target"])
    n_chunks = -(-n // C)
    return {  # the records first: a kill while the files are made leaves no data file without them
        "done": ((n_chunks,), np.dtype(np.uint64), 1, 0),
        "checksum": ((n_chunks,), np.dtype(np.uint64), 1, 0),
        "relevance": (((n, K) if multi else (n,)) + in_shape, dt, C, np.nan),
        "output": ((n,) + out_shape, dt, C, np.nan),
        "target": ((n, K) if multi else (n,), np.dtype(np.int64), C, -1),
        "valid": ((n,), np.dtype(np.uint8), C, 0),
    }


def stored_hash(input_hash, arrays) -> np.uint64:
    """A nonzero 64-bit hash of a chunk's record: its input hash and the stored
    arrays (their dtype, shape and bytes)."""
    h = hashlib.sha256(np.uint64(input_hash).tobytes())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return np.uint64(int.from_bytes(h.digest()[:8], "little") | 1)


def _os_error(e: OSError, path: str) -> OSError:
    return OSError(e.errno, f"{e.strerror or e} while writing the relevance store file {path} "
                            "(free some space, or fix the problem, and run the same call again: it resumes)")


class _NpyFile:
    """One ``.npy`` file of a store, read and written with file I/O at offsets,
    never through a memory map: a full disk is an OSError naming the file, not
    SIGBUS. The file is allocated to its full size when made."""

    def __init__(self, path, shape, dtype, offset):
        self.path, self.shape, self.dtype, self.offset = path, tuple(shape), np.dtype(dtype), offset
        self.row = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nbytes(self):
        return self.row * self.shape[0]

    @classmethod
    def create(cls, path, shape, dtype) -> "_NpyFile":
        import io

        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                    "fortran_order": False, "shape": tuple(shape)})
        f = cls(path, shape, dtype, len(head.getvalue()))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                _pwrite(fd, head.getvalue(), 0)
                f._allocate(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _os_error(e, path) from e
        return f

    def _allocate(self, fd):
        size = self.offset + self.nbytes
        try:
            os.posix_fallocate(fd, 0, size)  # the blocks now, so that a full disk shows here
        except (AttributeError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(fd, max(size, os.fstat(fd).st_size))

    @classmethod
    def open(cls, path, shape, dtype, repair=True):
        """(the file, None) or (the file, what was wrong with it): with ``repair`` a
        missing or unreadable file is made anew and a short one extended, else
        (None, why) / (the short file, "truncated")."""
        if not os.path.exists(path):
            return (cls.create(path, shape, dtype) if repair else None), "missing"
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                got_shape, fortran, got_dtype = read(fh)
                offset = fh.tell()
            why = None
            if tuple(got_shape) != tuple(shape) or np.dtype(got_dtype) != np.dtype(dtype) or fortran:
                why = f"holds {tuple(got_shape)} {np.dtype(got_dtype)}, expected {tuple(shape)} {np.dtype(dtype)}"
        except (ValueError, OSError, SyntaxError, TypeError) as e:
            why = f"unreadable header ({e})"
        if why:
            return (cls.create(path, shape, dtype) if repair else None), why
        f = cls(path, shape, dtype, offset)
        if os.path.getsize(path) >= offset + f.nbytes:
            return f, None
        if repair:
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    f._allocate(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _os_error(e, path) from e
        return f, "truncated"

    def _rows(self, key):
        if isinstance(key, (int, np.integer)):
            return int(key), int(key) + 1, True
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(self.shape[0])
            return a, max(a, b), False
        raise TypeError(f"a store .npy file is read by rows (an int or a slice), not {key!r}")

    def read(self, a, b, strict=True) -> np.ndarray:
        """Rows a:b; a short file is an error (``strict``) or reads as zeros."""
        want = (b - a) * self.row
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + a * self.row)
            buf = fh.read(want)
        if len(buf) < want:
            if strict:
                raise ValueError(f"{self.path} is truncated (rows {a}:{b} are past its end)")
            buf = buf + bytes(want - len(buf))
        return np.frombuffer(buf, dtype=self.dtype).reshape((b - a,) + self.shape[1:]).copy()

    def __getitem__(self, key):
        a, b, scalar = self._rows(key)
        r = self.read(a, b, strict=False)
        return r[0] if scalar else r

    def __setitem__(self, key, value):
        a, b, _ = self._rows(key)
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype), (b - a,) + self.shape[1:]))
        try:
            fd = os.open(self.path, os.O_RDWR)
            try:
                _pwrite(fd, data.reshape(-1).view(np.uint8), self.offset + a * self.row)
            finally:
                os.close(fd)
        except OSError as e:
            raise _os_error(e, self.path) from e


def _pwrite(fd, data, offset):
    view = memoryview(data).cast("B")
    while view.nbytes:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


class _Store:
    """A relevance store (a zarr group or .npy files) with per-chunk records.

    Chunk c is done when ``done[c]`` (the hash of its input) is nonzero; it is
    written after ``checksum[c]`` (:func:`stored_hash` of ``done[c]`` and the
    chunk's stored rows), which is written after the rows, so a chunk whose
    record is set and whose rows hash to its checksum is complete and unaltered.
    """

    def __init__(self, kind, path, meta, arrays, group=None):
        self.kind, self.path, self.meta, self.group = kind, path, meta, group
        self.relevance, self.output, self.target, self.valid, self.done, self.checksum = (arrays[k] for k in _NAMES)
        self.chunk = int(meta["chunk_size"])
        self.multi = bool(meta["multi_target"])

    # -- layout ------------------------------------------------------------------------
    @property
    def n(self):
        return int(self.relevance.shape[0])

    @property
    def n_chunks(self):
        return -(-self.n // self.chunk)

    def rows(self, c: int) -> tuple:
        return c * self.chunk, min(self.n, (c + 1) * self.chunk)

    def _records(self, arr) -> np.ndarray:
        """A record array; a record that cannot be read counts as not done (0)."""
        try:
            return np.asarray(arr[:], dtype=np.uint64)
        except Exception:  # noqa: BLE001 - a damaged record file: read what can be read
            out = np.zeros(arr.shape[0], np.uint64)
            for c in range(out.shape[0]):
                try:
                    out[c] = np.asarray(arr[c:c + 1])[0]
                except Exception:  # noqa: BLE001
                    pass
            return out

    def done_flags(self) -> np.ndarray:
        return self._records(self.done)

    def checksums(self) -> np.ndarray:
        return self._records(self.checksum)

    def ensure_length(self, n: int):
        """Grow the arrays to ``n`` samples (zarr stores of unknown length)."""
        if n <= self.n:
            return
        if self.kind != "zarr":
            raise InputError(f"the .npy store at {self.path} holds {self.n} samples; the data has more")
        nc = -(-n // self.chunk)
        # each array on its own (a kill between them leaves some longer), the relevance (self.n) last
        for arr, m in ((self.done, nc), (self.checksum, nc), (self.output, n), (self.target, n), (self.valid, n),
                       (self.relevance, n)):
            if arr.shape[0] < m:
                arr.resize((m,) + tuple(arr.shape[1:]))

    # -- chunks ------------------------------------------------------------------------
    def read_chunk(self, c: int) -> tuple:
        """The stored rows of chunk c: (relevance, output, target, valid); raises
        when a file cannot be read or decoded."""
        a, b = self.rows(c)
        return tuple(arr.read(a, b) if self.kind == "npy" else np.asarray(arr[a:b])
                     for arr in (self.relevance, self.output, self.target, self.valid))

    def chunk_intact(self, c: int, done, checksum) -> bool:
        """Whether chunk c's stored rows are readable and match its record."""
        if not done or not checksum:
            return False
        try:
            data = self.read_chunk(c)
        except Exception:  # noqa: BLE001 - a missing, truncated or undecodable chunk file
            return False
        return stored_hash(done, data) == np.uint64(checksum)

    def check(self, c: int, done, checksum, x) -> str:
        """Chunk c (record ``done``, ``checksum``) against its input ``x``: "ok",
        "damaged" (its stored rows are missing, unreadable or altered) or "changed"
        (intact, but computed from other input)."""
        if not self.chunk_intact(c, done, checksum):
            return "damaged"
        return "ok" if chunk_hash(x) == np.uint64(done) else "changed"

    def write_chunk(self, c: int, R, O, T, V, input_hash):
        """Write chunk c's rows (R: (n, K, ...), T: (n, K)), then its checksum, then its done marker."""
        dt = np.dtype(self.meta["dtype"])
        data = (np.ascontiguousarray((R if self.multi else R[:, 0]).astype(dt, copy=False)),
                np.ascontiguousarray(O.astype(dt, copy=False)),
                np.ascontiguousarray(T if self.multi else T[:, 0], dtype=np.int64),
                np.ascontiguousarray(V, dtype=np.uint8))
        a = c * self.chunk
        b = a + data[0].shape[0]
        try:
            for arr, d in zip((self.relevance, self.output, self.target, self.valid), data):
                arr[a:b] = d
            self.checksum[c] = stored_hash(input_hash, data)
            self.done[c] = np.uint64(input_hash)
        except OSError as e:
            if self.kind == "npy":
                raise
            raise OSError(e.errno, f"cannot write chunk {c} (samples {a}-{b - 1}) of the relevance store at "
                                   f"{self.path}: {e} (free some space, or fix the problem, and run the same call "
                                   "again: it resumes)") from e

    def set_meta(self, **kw):
        self.meta.update(kw)
        if self.kind == "zarr":
            self.group.attrs["fastlrp"] = self.meta  # zarr writes its metadata files atomically
        else:
            _write_json(_npy_paths(self.path)["meta"], self.meta)


def _npy_paths(path: str) -> dict:
    stem = path[:-4]
    return {"relevance": path, "output": stem + ".output.npy", "target": stem + ".target.npy",
            "valid": stem + ".valid.npy", "done": stem + ".done.npy", "checksum": stem + ".checksum.npy",
            "meta": stem + ".json"}


def _write_json(path, obj):
    """Atomically: a temporary file, flushed to disk, renamed over ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise _os_error(e, path) from e


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _store_kind(path: str) -> str:
    return "npy" if str(path).lower().endswith(".npy") else "zarr"


def _read_meta(path: str) -> Optional[dict]:
    """The metadata of an existing store at ``path``; None when nothing is there;
    raises StoreMismatchError for something that is not a (readable, current) fastlrp store."""
    if _store_kind(path) == "npy":
        p = _npy_paths(path)
        if os.path.exists(p["meta"]):
            try:
                with open(p["meta"]) as f:
                    meta = json.load(f)
            except (ValueError, UnicodeDecodeError) as e:
                raise StoreMismatchError(f"the metadata file {p['meta']} of the store at {path} is damaged ({e}); "
                                         f"the store cannot be checked: pass {OVERWRITE_HINT} to recompute it, or "
                                         "choose another path") from None
        elif os.path.exists(path):
            raise StoreMismatchError(f"{path} exists but is not a fastlrp relevance store (no {p['meta']}); "
                                     f"pass {OVERWRITE_HINT} to replace it")
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
            raise StoreMismatchError(f"{path} exists but is not a fastlrp relevance store (or its metadata file "
                                     f"zarr.json is damaged); pass {OVERWRITE_HINT} to replace it, or choose "
                                     "another path")
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise StoreMismatchError(f"{path} is not a fastlrp relevance store")
    version = meta.get("version", 0)
    if not isinstance(version, int) or version > STORE_VERSION:
        raise StoreMismatchError(f"{path}: store format version {version!r} is newer than this fastlrp supports")
    if version < STORE_VERSION:
        raise StoreMismatchError(
            f"{path} was written by an earlier fastlrp (store format {version}) that kept no checksums of the stored "
            f"chunks, so its contents cannot be verified; pass {OVERWRITE_HINT} to recompute it")
    return meta


def _remove_store(path: str):
    if _store_kind(path) == "npy":
        for k, p in sorted(_npy_paths(path).items(), key=lambda kv: kv[0] == "meta"):  # the metadata last
            if os.path.exists(p):
                os.remove(p)
    elif os.path.isdir(path):
        gone = f"{path}.fastlrp-removed-{os.getpid()}"
        os.rename(path, gone)  # at once: no half-removed store is left at path
        shutil.rmtree(gone)
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
            if key == "composite_id":
                a, b = f"{old.get('composite')} [{a}]", f"{new.get('composite')} [{b}]"
            elif key == "graph_fingerprint":
                a, b = f"{old.get('model')} [{str(a)[:12]}]", f"{new.get('model')} [{str(b)[:12]}]"
            raise StoreMismatchError(
                f"the store at {path} was made for another {what}: {a} (store) vs {b} (this call); "
                f"it is not appended to. Use another output path, or {OVERWRITE_HINT} to replace it")
    if old.get("n_samples") is not None and new.get("n_samples") is not None and old["n_samples"] != new["n_samples"]:
        raise StoreMismatchError(f"the store at {path} holds {old['n_samples']} samples, the data has "
                                 f"{new['n_samples']}; use another output path or {OVERWRITE_HINT}")


def open_store(path: str, meta: dict, overwrite: bool = False) -> _Store:
    """Open the store at ``path`` for the run described by ``meta`` (checking it
    matches, and rebuilding missing or damaged array files), or create it.
    ``meta['n_samples']`` may be None (zarr only)."""
    path = os.fspath(path)
    kind = _store_kind(path)
    if overwrite:
        _remove_store(path)
        old = None
    else:
        old = _read_meta(path)
    if old is not None:
        _check_meta(path, old, meta)
        store = _open_existing(kind, path, dict(old))
        if old.get("n_samples") is None and meta.get("n_samples") is not None:  # a zarr store of unknown length
            store.ensure_length(int(meta["n_samples"]))
            store.meta["n_samples"] = int(meta["n_samples"])
        return store
    try:
        return _create(kind, path, meta)
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, OSError) as e:
        raise OSError(e.errno, f"cannot write the relevance store at {path}: {e}") from e


def _create(kind, path, meta) -> _Store:
    """A new store. A kill at any moment leaves either nothing a later run
    refuses, or a store whose metadata is complete and whose arrays the next
    open rebuilds (.npy: the metadata file first; zarr: made in a temporary
    directory, renamed into place)."""
    n = meta["n_samples"]
    if kind == "npy":
        if n is None:
            raise InputError("a .npy store needs the number of samples in advance: give n_samples=, or write to "
                             "a zarr store (an output path not ending in .npy)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"directory {parent} does not exist")
        _write_json(_npy_paths(path)["meta"], meta)  # first: the files it describes are rebuilt when missing
        return _open_existing(kind, path, dict(meta), fresh=True)
    zarr = _import_zarr()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)  # a plain OSError when the place is not writable (zarr 2 says KeyError)
    tmp = f"{os.path.abspath(path)}.fastlrp-new-{os.getpid()}"
    for old in glob.glob(glob.escape(os.path.abspath(path)) + ".fastlrp-new-*"):  # left by a killed creation
        shutil.rmtree(old, ignore_errors=True)
    g = zarr.open_group(tmp, mode="a")
    for name, (shape, dt, rows, fill) in _layout(meta, 0 if n is None else n).items():
        _zarr_create(g, name, shape, (rows,) + shape[1:], dt, fill)
    g.attrs["fastlrp"] = meta
    if os.path.isdir(path):
        os.rmdir(path)  # an empty directory the user made (anything else was refused)
    os.rename(tmp, path)
    _fsync_dir(parent)
    return _open_existing(kind, path, dict(meta), fresh=True)


def _open_arrays(kind, path, meta, repair: bool) -> tuple:
    """(name -> array, problems found: [(name, file, what is wrong)], the zarr
    group). A missing or damaged array file is rebuilt empty when ``repair`` (its
    chunks then fail their checksums and are recomputed), else left out (None)."""
    n = meta.get("n_samples")
    arrays, problems = {}, []
    if kind == "npy":
        p = _npy_paths(path)
        for name, (shape, dt, _, _) in _layout(meta, int(n)).items():
            arrays[name], why = _NpyFile.open(p[name], shape, dt, repair=repair)
            if why:
                problems.append((name, p[name], why))
        return arrays, problems, None
    zarr = _import_zarr()
    g = zarr.open_group(path, mode="r+" if repair else "r")
    layout = _layout(meta, 0 if n is None else int(n))
    if n is None:  # a store of unknown length: the length its relevance array has
        try:
            layout = _layout(meta, int(g["relevance"].shape[0]))
        except Exception:  # noqa: BLE001 - rebuilt below
            pass
    for name, (shape, dt, rows, fill) in layout.items():
        why = None
        try:
            arr = g[name]
            got = tuple(arr.shape) if n is not None else (shape[0],) + tuple(arr.shape[1:])  # unknown length: any
            if got != shape or np.dtype(arr.dtype) != dt or tuple(arr.chunks) != (rows,) + shape[1:]:
                why = f"shape {tuple(arr.shape)} {np.dtype(arr.dtype)}, expected {shape} {dt}"
        except Exception as e:  # noqa: BLE001 - missing or undecodable array metadata
            arr, why = None, f"missing or unreadable ({type(e).__name__})"
        if why:
            problems.append((name, os.path.join(path, name), why))
            arr = _zarr_create(g, name, shape, (rows,) + shape[1:], dt, fill) if repair else None
        arrays[name] = arr
    return arrays, problems, g


def _open_existing(kind, path, meta, fresh=False) -> _Store:
    arrays, problems, group = _open_arrays(kind, path, meta, repair=True)
    store = _Store(kind, path, meta, arrays, group=group)
    if not problems or fresh:
        return store
    bad = {name: why for name, _, why in problems}
    # a kill while the store was made leaves missing files but loses nothing: no computed chunk was recorded
    lost = (np.count_nonzero(store.done_flags()) > 0) if "done" not in bad else \
        any(bad.get(k) != "missing" for k in _DATA + ("checksum",))
    if lost:
        warnings.warn(f"the store at {path} had damaged or missing files, rebuilt empty (the chunks they held are "
                      f"recomputed): {'; '.join(f'{f}: {why}' for _, f, why in problems)}", StoreDamageWarning,
                      stacklevel=4)
    return store


def load_store(path: str) -> dict:
    """Open a finished (or partial) store read-only: a dict with the arrays
    ``relevance``, ``output``, ``target``, ``valid``, ``done``, ``checksum`` (zarr
    arrays or memory maps) and ``meta``. It does not check the contents: see
    :func:`verify_store`."""
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
    ``reused_chunks``: chunks found done (and intact); ``damaged_chunks``: chunks
    found marked done whose stored data were missing or altered, recomputed by
    this call (a :class:`StoreDamageWarning` says so); ``nonfinite``: indices of all samples
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
    damaged_chunks: list = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def from_store(cls, store, n, computed, computed_chunks, reused, seconds, damaged=()) -> "DatasetResult":
        """The result of a run that computed ``computed`` samples (``computed_chunks``
        chunks) of the ``n`` in ``store``, found ``reused`` chunks done and intact
        and recomputed the ``damaged`` ones."""
        valid = np.asarray(store.valid[:n]) if n else np.zeros(0, np.uint8)
        C = store.chunk
        done_rows = np.zeros(n or 0, dtype=bool)
        for c in np.flatnonzero(store.done_flags()):
            done_rows[c * C:(c + 1) * C] = True
        bad = np.flatnonzero(done_rows & (valid == 0))
        return cls(path=store.path, n_samples=int(n or 0), chunk_size=C, computed=computed,
                   computed_chunks=computed_chunks, reused_chunks=reused, seconds=seconds, nonfinite=bad,
                   meta=dict(store.meta), damaged_chunks=[int(c) for c in damaged])

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
    """Hashes the input of each finished chunk and writes the chunk (rows, checksum,
    then the done marker: :meth:`_Store.write_chunk`) in a background thread, so that
    hashing, compression and disk I/O overlap the next chunks' compute (hashlib, the
    codecs, file I/O and fastlrp's kernels release the GIL).

    At most ``depth`` chunks wait in the queue (plus the one being written): ``put``
    blocks when it is full, so memory stays bounded by about ``depth + 1`` chunks of
    relevance and input besides the ones being computed. The first error in the thread
    stops the writing (later chunks are dropped, never marked done) and is raised,
    the same exception object, by the next ``put`` or by ``finish``."""

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
            c, R, O, T, V, x = item
            try:
                self.store.write_chunk(c, R, O, T, V, chunk_hash(x))
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
    flags, sums = store.done_flags(), store.checksums()
    n_chunks = None if n is None else -(-n // C)
    if n is None and store.meta.get("complete") and store.meta.get("n_samples") is not None:
        n_chunks = -(-int(store.meta["n_samples"]) // C)
    finished = [int(c) for c in np.flatnonzero(flags[:n_chunks])]
    damaged = []  # (c, a, b): marked done, but the stored rows fail their checksum
    todo = None
    if src.random_access:
        # every finished chunk against the source and its checksum, before anything is computed
        check = Progress(sum(min(C, n - c * C) for c in finished) if finished else 0, 0,
                         quiet or not finished, "check")
        changed = []
        for c in finished:
            a, b = c * C, min(n, (c + 1) * C)
            state = store.check(c, flags[c], sums[c], src.read(a, b))
            if state != "ok":
                (changed if state == "changed" else damaged).append((c, a, b))
            check.update(b - a)
        check.close()
        if changed:
            raise changed_error(out, changed)
        redo = {c for c, _, _ in damaged}
        todo = [c for c in range(n_chunks) if not flags[c] or c in redo]
    reused = len(finished) - len(damaged)
    initial = 0 if todo is None else n - sum(min(C, n - c * C) for c in todo)
    prog = Progress(n, initial, quiet, "explain")
    group = max(1, batch_size // C)
    computed = computed_chunks = 0
    new_bad = []
    writer = _Writer(store)
    ok = False
    try:
        pending = []  # (c, x, y)

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
            parts = []  # (c, the rows of chunk c: R, O, T, V, and its input x)
            for c0, x, y, chunks in runs:
                a = c0 * C
                res = explain_chunk(explainer, x, targets.select(slice(a, a + x.shape[0])), y=y, start=a,
                                    nonfinite=nonfinite, batch_size=batch_size)
                r = 0
                for c, xc, _ in chunks:
                    m = xc.shape[0]
                    parts.append((c, res.relevance[r:r + m], res.output[r:r + m], res.target[r:r + m],
                                  res.valid[r:r + m], xc))
                    r += m
            for c, R, O, T, V, xc in parts:
                bad = np.flatnonzero(V == 0) + c * C
                if bad.size:
                    new_bad.extend(bad.tolist())
                    prog.write(f"fastlrp: skipped {bad.size} sample(s) with NaN/Inf: {bad[:10].tolist()}"
                               f"{' ...' if bad.size > 10 else ''}")
                writer.put((c, R, O, T, V, xc))
                computed += R.shape[0]
                computed_chunks += 1
                prog.update(R.shape[0])
            pending.clear()

        if src.random_access:
            for c in todo:
                x = src.read(c * C, min(n, (c + 1) * C))
                pending.append((c, x, None))
                if len(pending) >= group:
                    flush()
            flush()
            total = n
        else:
            total = 0
            for c, (x, y) in enumerate(src.chunks(C)):
                a = total
                total += x.shape[0]
                if n is not None and total > n:
                    raise InputError(f"the data source yielded more than the {n} samples it announced")
                if c < flags.shape[0] and flags[c]:
                    state = store.check(c, flags[c], sums[c], x)
                    if state == "changed":  # chunks computed before this one in this run are of this source
                        raise changed_error(out, [(c, a, total)])
                    if state == "ok":
                        prog.update(x.shape[0])
                        continue
                    damaged.append((c, a, total))
                    reused -= 1
                if n is None:
                    store.ensure_length(total)
                pending.append((c, x, y))
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
    res = DatasetResult.from_store(store, n, computed, computed_chunks, reused, time.perf_counter() - t_start,
                                   damaged=[c for c, _, _ in damaged])
    if damaged:
        warnings.warn(damaged_message(out, damaged), StoreDamageWarning, stacklevel=3)
    if len(new_bad):
        warnings.warn(f"{len(new_bad)} sample(s) with NaN or Inf values were skipped (relevance NaN, valid=0): "
                      f"{new_bad[:20]}{' ...' if len(new_bad) > 20 else ''}", NonFiniteSamplesWarning, stacklevel=3)
    return res


def _spans(chunks) -> str:
    """'3 (samples 24-31), 5 (samples 40-47)' for [(c, a, b), ...] (the first 10)."""
    s = ", ".join(f"{c} (samples {a}-{b - 1})" for c, a, b in chunks[:10])
    return s + (f" and {len(chunks) - 10} more" if len(chunks) > 10 else "")


def damaged_message(path, chunks) -> str:
    """The warning for chunks [(c, a, b), ...] found damaged and recomputed."""
    return (f"the store at {path}: chunk(s) {_spans(chunks)} were marked done but their stored data were missing, "
            "truncated or altered (they did not match their checksums); they were recomputed")


def changed_error(path, chunks) -> StoreMismatchError:
    """The refusal for finished chunks [(c, a, b), ...] whose input changed."""
    return StoreMismatchError(
        f"the store at {path} was computed from different data than the source gives now: chunk(s) "
        f"{_spans(chunks)} differ; the store is left as it was. Pass {OVERWRITE_HINT} to recompute it from this "
        "source, or write to another path (an iterable source must yield the same samples in the same order on "
        "every run: no shuffling)")


# ------------------------------------------------------------------------------------------
# verifying a store


@dataclass
class StoreReport:
    """What :func:`verify_store` found. ``ok``: no problems (every chunk done,
    readable, matching its checksum and, when a source was given, its input);
    ``problems``: one human-readable line each; ``damaged_chunks`` (missing,
    unreadable or altered rows, or inconsistent valid flags), ``changed_chunks``
    (intact but computed from other input than the source), ``missing_chunks``
    (not computed yet) list chunk indices."""

    path: str
    problems: list = field(default_factory=list)
    n_chunks: int = 0
    done_chunks: int = 0
    damaged_chunks: list = field(default_factory=list)
    changed_chunks: list = field(default_factory=list)
    missing_chunks: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self):
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        head = f"{self.path}: {self.done_chunks} of {self.n_chunks} chunks done, {state}" if self.n_chunks else \
            f"{self.path}: {state}"
        lines = [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join([head] + lines)


def _consistency(R, T, V, multi) -> Optional[str]:
    """What is inconsistent in a chunk's valid flags (None: nothing)."""
    if not np.isin(V, (0, 1)).all():
        return "valid flags other than 0 and 1"
    skipped, kept = V == 0, V == 1
    Rf = R.reshape(R.shape[0], -1) if R.shape[0] else R.reshape(0, 1)
    Tf = T.reshape(T.shape[0], -1) if multi else T.reshape(-1, 1)
    if skipped.any() and not (np.isnan(Rf[skipped]).all() and (Tf[skipped] == -1).all()):
        return "samples marked skipped (valid 0) with relevance or a target"
    if kept.any() and np.isnan(Rf[kept]).all(axis=1).any():
        return "samples marked explained (valid 1) whose relevance is all NaN"
    return None


def verify_store(path, source=None, key: Optional[str] = None, quiet: bool = True) -> StoreReport:
    """Check a relevance store end to end: its metadata, every array file, every
    chunk (done, readable, matching its checksum, valid flags consistent) and,
    with ``source`` (what :func:`explain_dataset` takes: an array, a path or an
    iterable; ``key`` as there), that each done chunk was computed from the
    source's samples. Changes nothing. Returns a :class:`StoreReport`; raises
    FileNotFoundError when there is no store at all at ``path``."""
    path = os.fspath(path)
    kind = _store_kind(path)
    if not (os.path.exists(path) or (kind == "npy" and os.path.exists(_npy_paths(path)["meta"]))):
        raise FileNotFoundError(f"no relevance store at {path}")
    rep = StoreReport(path)
    try:
        meta = _read_meta(path)
        if meta is None:
            raise StoreMismatchError(f"{path} is an empty directory, not a relevance store")
        for k in ("chunk_size", "n_targets", "multi_target", "input_shape", "output_shape", "dtype"):
            if k not in meta:
                raise StoreMismatchError(f"the metadata of {path} lack '{k}'")
        if kind == "npy" and meta.get("n_samples") is None:
            raise StoreMismatchError(f"the metadata of {path} lack the number of samples")
        arrays, problems, _ = _open_arrays(kind, path, meta, repair=False)
    except (StoreMismatchError, ImportError, OSError, ValueError, TypeError, KeyError) as e:
        rep.problems.append(str(e))
        return rep
    rep.problems += [f"{f}: {why} (run the same explain_dataset call again to rebuild it)" for _, f, why in problems]
    if arrays["done"] is None or arrays["checksum"] is None or arrays["relevance"] is None:
        return rep
    st = _Store(kind, path, meta, arrays)
    flags, sums = st.done_flags(), st.checksums()
    rep.n_chunks = st.n_chunks
    if meta.get("n_samples") is not None and st.n != int(meta["n_samples"]):
        rep.problems.append(f"the relevance array holds {st.n} samples, the metadata say {meta['n_samples']}")
    inputs = _source_chunks(source, key, st) if source is not None else None
    short = False
    prog = Progress(rep.n_chunks, 0, quiet, "verify")
    for c in range(rep.n_chunks):
        a, b = st.rows(c)
        x = next(inputs, None) if inputs is not None else None
        short = short or (inputs is not None and x is None)
        prog.update(1)
        if not flags[c]:
            rep.missing_chunks.append(c)
            continue
        rep.done_chunks += 1
        try:
            data = st.read_chunk(c)
        except Exception as e:  # noqa: BLE001 - a missing, truncated or undecodable file
            rep.damaged_chunks.append(c)
            rep.problems.append(f"chunk {c} (samples {a}-{b - 1}) cannot be read: {type(e).__name__}: {e}")
            continue
        if stored_hash(flags[c], data) != sums[c]:
            rep.damaged_chunks.append(c)
            rep.problems.append(f"chunk {c} (samples {a}-{b - 1}) does not match its checksum (a file was altered, "
                                "truncated or deleted)")
            continue
        bad = _consistency(data[0], data[2], data[3], st.multi)
        if bad:
            rep.damaged_chunks.append(c)
            rep.problems.append(f"chunk {c} (samples {a}-{b - 1}): {bad}")
            continue
        if x is not None and chunk_hash(x) != flags[c]:
            rep.changed_chunks.append(c)
            rep.problems.append(f"chunk {c} (samples {a}-{b - 1}) was computed from different data than the source "
                                "gives")
    prog.close()
    if short:
        rep.problems.append(f"the source has fewer samples than the store ({st.n})")
    elif inputs is not None and next(inputs, None) is not None:
        rep.problems.append(f"the source has more samples than the store ({st.n})")
    if rep.missing_chunks:
        m = rep.missing_chunks
        rep.problems.append(f"{len(m)} of {rep.n_chunks} chunk(s) not computed yet ({_spans([(c, *st.rows(c)) for c in m])}"
                            "): run the same explain_dataset call again to finish the store")
    if rep.damaged_chunks:
        rep.problems.append(f"{len(rep.damaged_chunks)} damaged chunk(s): run the same explain_dataset call again, "
                            "it recomputes them")
    if rep.changed_chunks:
        rep.problems.append(f"{len(rep.changed_chunks)} chunk(s) differ from the source: recompute the store with "
                            f"{OVERWRITE_HINT}, or check that this is the right source")
    return rep


def _source_chunks(source, key, store):
    """The source's samples chunk by chunk, as the store is chunked (shorter than
    the store: None for the missing chunks)."""
    src = open_source(source, key=key, n_samples=store.n)
    try:
        if src.random_access:
            for c in range(store.n_chunks):
                a, b = store.rows(c)
                yield src.read(a, b) if b <= src.n else None
            if src.n > store.n:
                yield src.read(store.n, store.n + 1)
        else:
            src.peek()
            for x, _ in src.chunks(store.chunk):
                yield x
    finally:
        if src is not source:
            src.close()
