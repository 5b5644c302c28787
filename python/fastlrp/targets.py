"""Which outputs an explanation is of: the one parser of target specifications.

Every entry point (:meth:`Explainer.explain <fastlrp.Explainer.explain>`,
:meth:`~fastlrp.Explainer.explain_batch`, :func:`fastlrp.dataset.explain_dataset`,
:func:`fastlrp.dask.explain_dask` and ``fastlrp explain``) reads its ``target``
with :func:`parse_target`, which accepts:

- ``None`` (or ``"argmax"``, ``"pred"``, ``"prediction"``, ``"none"``): each
  sample's arg-max output;
- an ``int``: that output for every sample;
- ``"all"``: every output (K = the number of outputs, one shared forward pass);
- ``"label"`` (or ``"labels"``, ``"y"``): the labels that come with the data
  (a dataset source yielding ``(x, y)`` batches; see :meth:`TargetSpec.with_labels`);
- an int array ``(N,)``: one output per sample; ``(N, K)``: K outputs per sample;
- a float array ``(N, *output_shape)``: the seed relevance itself, used as given.

Several targets per sample (``"all"``, ``(N, K)``, K-column labels) give the
relevance a K axis after the sample axis. A target index selects an entry of the
flattened output. Apart from given seeds, the seed relevance of a target is the
selected output's value (zeros elsewhere), so the relevance sums to the
explained output up to what biases and stabilizers absorb.

Torch tensors and dask arrays are accepted wherever arrays are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .errors import InputError

__all__ = ["InputError", "TargetSpec", "as_numpy", "one_sample_target", "parse_target"]

ARGMAX_WORDS = ("argmax", "pred", "prediction", "none")
LABEL_WORDS = ("label", "labels", "y")
_FORMS = "None, an int, 'all', 'label', an int array (N,) or (N, K), or a float seed array (N, *output_shape)"


def as_numpy(a) -> np.ndarray:
    """``a`` as a NumPy array: torch tensors are copied to the host, dask arrays computed."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        return a.detach().cpu().numpy()
    if hasattr(a, "compute") and not isinstance(a, np.ndarray):  # a dask array
        a = a.compute()
    return np.asarray(a)


def _digest(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    return f"{hashlib.sha256(a.tobytes()).hexdigest()[:16]}:{'x'.join(map(str, a.shape))}:{a.dtype.str}"


@dataclass(frozen=True, eq=False)
class TargetSpec:
    """A parsed target specification (made by :func:`parse_target`).

    ``kind`` is one of ``"argmax"``, ``"index"`` (``index`` for every sample),
    ``"all"``, ``"label"`` (labels still to come, :meth:`with_labels`),
    ``"indices"`` (``array``: (N, K) int64 output indices) or ``"seed"``
    (``array``: (N, *output_shape) seed relevance). ``k`` targets are explained
    per sample; ``multi`` says whether results get a K axis. ``key`` identifies
    the specification (stored with dataset results: a resumed run must use the
    same one).
    """

    kind: str
    output_shape: tuple
    key: str
    index: Optional[int] = None
    array: Optional[np.ndarray] = None
    k: int = 1
    multi: bool = False

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def per_sample(self) -> bool:
        """True when the specification holds one row per sample (``array``)."""
        return self.array is not None

    # -- slicing and labels ---------------------------------------------------------
    def select(self, rows) -> "TargetSpec":
        """The specification for the samples ``rows`` (a slice, index array or
        boolean mask) of those it was made for; forms without per-sample rows are
        returned as they are."""
        if self.array is None:
            return self
        return replace(self, array=np.asarray(self.array[rows]))

    def labelled_like(self, y) -> "TargetSpec":
        """``target='label'`` for labels shaped like ``y`` (a batch of them): one
        target per sample for ``(n,)`` labels, K for ``(n, K)``."""
        self._need_kind("label", "labelled_like")
        y = as_numpy(y)
        k = 1 if y.ndim <= 1 else int(np.prod(y.shape[1:]))
        return replace(self, k=k, multi=y.ndim > 1)

    def with_labels(self, y) -> "TargetSpec":
        """``target='label'`` resolved for one batch: its labels ``y`` as the
        output indices to explain (checked against the model's outputs)."""
        self._need_kind("label", "with_labels")
        if y is None:
            raise InputError("target='label' needs a source yielding (x, y) batches")
        t = as_numpy(y)
        if t.ndim == 0:
            raise InputError(f"labels need a sample axis, got a scalar {t!r}")
        if t.dtype.kind not in "biuf":
            raise InputError(f"labels must be integers, got dtype {t.dtype}")
        t = t.astype(np.int64, copy=False)
        t = t[:, None] if t.ndim == 1 else t.reshape(t.shape[0], -1)
        if t.shape[1] != self.k:
            raise InputError(f"labels must have {self.k} column(s) per sample throughout, got shape {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= self.n_outputs):
            raise InputError(f"label out of range: the model has {self.n_outputs} output(s), got {t.min()}..{t.max()}")
        return replace(self, kind="indices", array=t)

    def _need_kind(self, kind, what):
        if self.kind != kind:
            raise ValueError(f"TargetSpec.{what} is for target='{kind}', not for a '{self.kind}' target")

    # -- a batch's seeds ------------------------------------------------------------
    def check_batch(self, n: int) -> None:
        """InputError unless the specification can be applied to ``n`` samples as it
        is: per-sample rows must number ``n``, labels must have been given."""
        if self.kind == "label":
            raise InputError("target='label' needs the labels: pass them as an int array (one per sample), or give "
                             "explain_dataset a source yielding (x, y) batches")
        if self.array is not None and self.array.shape[0] != n:
            _rows_error(self.array, n, self.kind == "seed", self.output_shape)

    def indices(self, out) -> Optional[np.ndarray]:
        """The output indices explained for a batch's outputs ``out`` (N,
        *output_shape): (N, K) int64; None for given seed relevance."""
        N = out.shape[0]
        self.check_batch(N)
        if self.kind == "argmax":
            return np.argmax(out.reshape(N, -1), axis=1)[:, None]
        if self.kind == "index":
            return np.full((N, 1), self.index, dtype=np.int64)
        if self.kind == "all":
            return np.broadcast_to(np.arange(self.n_outputs, dtype=np.int64), (N, self.n_outputs))
        if self.kind == "indices":
            return self.array
        return None

    def seeds(self, out, dtype=None) -> list:
        """The seed relevance for a batch's outputs ``out``: a list of K arrays of
        ``out``'s shape, the k-th holding each sample's k-th target output value
        (zeros elsewhere), or [the given seed relevance] (as ``dtype``, default
        ``out``'s)."""
        idx = self.indices(out)
        if idx is None:
            return [np.ascontiguousarray(np.asarray(self.array).reshape(out.shape), dtype=out.dtype if dtype is None else dtype)]
        flat = out.reshape(out.shape[0], -1)
        rows = np.arange(flat.shape[0])
        seeds = []
        for k in range(idx.shape[1]):
            seed = np.zeros_like(flat)
            seed[rows, idx[:, k]] = flat[rows, idx[:, k]]
            seeds.append(seed.reshape(out.shape))
        return seeds


def _rows_error(a, n, seed, output_shape):
    if seed:
        raise InputError(f"the seed relevance (float target) has {a.shape[0]} rows but there are {n} samples")
    raise InputError(f"target of shape {a.shape} does not fit {n} sample(s) (it has {a.shape[0]} rows): give an int, "
                     f"one int per sample ({n},), or ({n}, K) ints for K targets per sample")


def parse_target(target, output_shape, n_samples: Optional[int] = None) -> TargetSpec:
    """Check ``target`` (any form listed in :mod:`fastlrp.targets`, or a
    :class:`TargetSpec`) against a model's ``output_shape`` (one sample's) and,
    when given, the number of samples; return its :class:`TargetSpec`."""
    output_shape = tuple(int(s) for s in output_shape)
    M = int(np.prod(output_shape))
    if isinstance(target, TargetSpec):
        if target.output_shape != output_shape:
            raise InputError(f"the target was made for outputs of shape {target.output_shape}, the model has "
                             f"{output_shape}")
        spec = target
    elif target is None:
        spec = TargetSpec("argmax", output_shape, "argmax")
    elif isinstance(target, str):
        word = target.strip().lower()
        if word == "all":
            spec = TargetSpec("all", output_shape, "all", k=M, multi=True)
        elif word in LABEL_WORDS:
            spec = TargetSpec("label", output_shape, "label")
        elif word in ARGMAX_WORDS:
            spec = TargetSpec("argmax", output_shape, "argmax")
        else:
            raise InputError(f"target '{target}' is not understood (use {_FORMS})")
    else:
        a = as_numpy(target)
        if np.issubdtype(a.dtype, np.integer) and a.ndim == 0:
            i = int(a)
            if not 0 <= i < M:
                raise InputError(f"target index {i} is out of range: the model has {M} output(s)")
            spec = TargetSpec("index", output_shape, f"class:{i}", index=i)
        elif np.issubdtype(a.dtype, np.floating):
            if a.ndim == 0 or a.shape[1:] != output_shape:
                want = f"({n_samples if n_samples is not None else 'N'}, {', '.join(map(str, output_shape))})"
                raise InputError(f"a float target is the seed relevance and must have the output's shape {want}, "
                                 f"got {a.shape}")
            if not np.isfinite(a).all():
                raise InputError("the seed relevance (float target) has NaN or Inf values")
            spec = TargetSpec("seed", output_shape, f"seed:{_digest(a)}", array=a)
        elif np.issubdtype(a.dtype, np.integer):
            if a.ndim > 2:
                _rows_error(a, n_samples if n_samples is not None else "N", False, output_shape)
            if a.size and (a.min() < 0 or a.max() >= M):
                raise InputError(f"target index out of range: the model has {M} output(s), got {a.min()}..{a.max()}")
            idx = a.astype(np.int64, copy=False)
            idx = idx[:, None] if a.ndim == 1 else idx
            spec = TargetSpec("indices", output_shape, f"array:{_digest(a)}", array=idx, k=idx.shape[1],
                              multi=a.ndim == 2)
        else:
            raise InputError(f"target must be {_FORMS}; got an array of dtype {a.dtype} and shape {a.shape}")
    if n_samples is not None and spec.array is not None and spec.array.shape[0] != n_samples:
        _rows_error(spec.array, n_samples, spec.kind == "seed", output_shape)
    return spec


def one_sample_target(target, output_shape):
    """The batch-of-one form of a target given for one sample (an input without a
    batch axis): K ints ``(K,)`` become ``(1, K)`` (K targets of that sample), a
    float array of the output's shape becomes ``(1, *output_shape)``; the other
    forms hold for any number of samples and are returned as they are."""
    if target is None or isinstance(target, (str, int, np.integer, TargetSpec)):
        return target
    a = as_numpy(target)
    if np.issubdtype(a.dtype, np.floating):
        if a.shape != tuple(output_shape):
            raise InputError(f"a float target is the seed relevance and must have the output's shape "
                             f"{tuple(output_shape)}, got {a.shape}")
        return a[None]
    if np.issubdtype(a.dtype, np.integer) and a.ndim >= 1:
        if a.ndim > 1:
            raise InputError(f"target of shape {a.shape} does not fit one sample: give an int, or (K,) ints for K "
                             "targets of the sample")
        return a[None]
    return a
