"""The engine: one forward pass keeping what each rule needs, then the relevance pass."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .backends.base import DeviceOutOfMemory
from .backends.plan import make_plan
from .composites import Composite, get_composite
from .graph import Graph
from .memory import keep_freed_blocks
from .targets import InputError, one_sample_target, parse_target

__all__ = ["BatchResult", "Explainer", "InputError", "RelevanceReport", "get_backend"]


def get_backend(backend="auto", precision="float32"):
    """Return a backend instance for a name (``"auto"``, ``"reference"``, ``"cpu"``,
    ``"numba"``, ``"cuda"``) or pass a backend object through. ``precision="bf16"``
    (the compiled CPU backend's bfloat16 products, see :class:`~fastlrp.backends.cpu.CpuBackend`)
    needs ``"cpu"`` or ``"auto"``."""
    if not isinstance(backend, str):
        if precision != getattr(backend, "precision", "float32"):
            from .backends.base import BackendError

            raise BackendError(f"precision={precision!r} differs from the backend object's "
                               f"({getattr(backend, 'precision', 'float32')!r}); pass it to the backend instead")
        return backend
    name = backend.lower()
    if precision != "float32":
        if name not in ("cpu", "auto"):
            from .backends.base import BackendError

            raise BackendError(f"precision={precision!r} is offered by the compiled CPU backend only "
                               f"(backend='cpu'), not by backend={backend!r}")
        from .backends.cpu import CpuBackend

        return CpuBackend(precision=precision)
    if name == "reference":
        from .backends.reference import ReferenceBackend

        return ReferenceBackend()
    if name in ("cpu", "auto"):
        from . import _ext

        if _ext.core is not None:
            from .backends.cpu import CpuBackend

            return CpuBackend()
        if name == "cpu":
            from .backends.base import BackendError

            raise BackendError(f"the compiled CPU backend is not available: {_ext.core_error}")
        try:
            from .backends.numba_backend import NumbaBackend
        except ImportError:
            from .backends.reference import ReferenceBackend

            warnings.warn(
                f"fastlrp: the compiled extension is not available ({_ext.core_error}); "
                "using the slow float64 reference backend",
                RuntimeWarning,
                stacklevel=3,
            )
            return ReferenceBackend()
        warnings.warn(
            f"fastlrp: the compiled extension is not available ({_ext.core_error}); using the Numba backend",
            RuntimeWarning,
            stacklevel=3,
        )
        return NumbaBackend()
    if name == "numba":
        from .backends.numba_backend import NumbaBackend

        return NumbaBackend()
    if name == "cuda" or name.startswith("cuda:"):
        from .backends.cuda import CudaBackend

        return CudaBackend(device=int(name[5:]) if name.startswith("cuda:") else 0)
    if name == "cuda-emu":
        from .backends.cuda import CudaBackend

        return CudaBackend(emulate=True)
    from .backends.base import BackendError

    raise BackendError(f"unknown backend '{backend}' (choose auto, reference, cpu, numba, cuda, cuda:N or cuda-emu)")


@dataclass
class RelevanceReport:
    """Where relevance goes, node by node (sums per sample).

    ``relevance_out[name]`` is the relevance arriving at a node's output,
    ``relevance_in[name]`` what it passes on to its inputs in total; the
    difference is what the node absorbs (biases, stabilizers, negative beta
    terms, ...). ``explained`` is the seed relevance per sample.
    """

    names: list
    ops: list
    rules: list
    relevance_out: dict
    relevance_in: dict
    explained: np.ndarray

    def absorbed(self, name: str) -> np.ndarray:
        return self.relevance_out[name] - self.relevance_in[name]

    def __str__(self):
        lines = [f"{'node':<28} {'op':<16} {'rule':<34} {'R out':>12} {'R in':>12} {'absorbed':>12}"]
        for n, op, r in zip(self.names, self.ops, self.rules):
            ro = float(np.sum(self.relevance_out[n]))
            ri = float(np.sum(self.relevance_in[n]))
            lines.append(f"{n:<28} {op:<16} {r:<34} {ro:>12.5g} {ri:>12.5g} {ro - ri:>12.3g}")
        lines.append(f"explained (sum over samples): {float(np.sum(self.explained)):.6g}")
        return "\n".join(lines)


class Explainer:
    """Explain a model's outputs with LRP.

    Parameters
    ----------
    graph : Graph
        The model (from :func:`fastlrp.from_torch`, :func:`fastlrp.from_keras`,
        :meth:`Graph.load` or built by hand).
    composite : str or Composite
        Which rule each layer gets: a name (``"epsilon_plus_flat"``,
        ``"epsilon_gamma_box(low=-3, high=3)"``, ...) or a
        :class:`~fastlrp.composites.Composite`.
    backend : str
        ``"auto"`` (the compiled CPU backend when built), ``"reference"``
        (float64 NumPy), ``"cpu"``, ``"numba"``, ``"cuda"``.
    precision : str
        ``"float32"`` (default), or ``"bf16"``: the CPU backend's dense and conv
        products on bfloat16 operands with float32 sums (AMX-BF16 or AVX512_BF16 CPUs; faster,
        heatmaps agree with float64 to the correlations of docs/precision.md).
    """

    def __init__(self, graph: Graph, composite="epsilon_plus", backend="auto", precision="float32"):
        if not isinstance(graph, Graph):
            raise TypeError(
                f"Explainer needs a fastlrp Graph, got {type(graph).__name__}; "
                "convert models with fastlrp.from_torch(...) or fastlrp.from_keras(...)"
            )
        keep_freed_blocks()  # reuse the large arrays' memory between calls (fastlrp.memory)
        self.graph = graph
        self.composite: Composite = get_composite(composite)
        self.rules = self.composite.resolve(graph)
        self.backend = get_backend(backend, precision)
        self.dtype = np.dtype(self.backend.dtype)
        self._nodes = graph.live_nodes()  # only nodes the output depends on are run
        graph.check_finite(self._nodes)
        self._plan = make_plan(self.backend, graph, self._nodes, self.rules)
        self._channels_last = graph.meta.get("layout") == "channels_last" and len(graph.input_shape) > 1

    def __repr__(self):
        return f"Explainer({self.composite.name}, backend={self.backend.name}, {len(self._nodes)} nodes)"

    @property
    def plan(self):
        """What runs the graph (:class:`fastlrp.backends.plan.NodePlan`, or the backend's
        own compiled plan); a NodePlan's ``ops`` maps node names to their prepared ops."""
        return self._plan

    @property
    def nodes(self) -> tuple:
        """The nodes the output depends on, in the order they run."""
        return tuple(self._nodes)

    @property
    def channels_last(self) -> bool:
        """True for a channels-last model (Keras): input and relevance are channels-last."""
        return self._channels_last

    @property
    def sample_shape(self) -> tuple:
        """The shape of one input sample as given to :meth:`explain` (channels last
        for channels-last models) and of its relevance."""
        shape = tuple(self.graph.input_shape)
        return shape[1:] + shape[:1] if self._channels_last else shape

    # -- input handling --------------------------------------------------------------
    def _prepare_input(self, x, check_finite=True):
        """Return (batched array in engine layout and dtype, had_batch_axis)."""
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"cannot convert input of type {type(x).__name__} to an array: {e}") from e
        if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InputError(f"input must be a real floating-point (or integer) array, got dtype {x.dtype}")
        batched = self._is_batched(x.shape, self.sample_shape)
        if not batched:
            x = x[None]
        if check_finite:
            idx = np.flatnonzero(self._nonfinite_rows(x))
            if idx.size:
                raise InputError(
                    f"input has NaN or Inf values in sample(s) {idx[:10].tolist()}{' ...' if len(idx) > 10 else ''}"
                )
        if self._channels_last:
            x = np.moveaxis(x, -1, 1)
        return np.ascontiguousarray(x, dtype=self.dtype), batched

    @staticmethod
    def _nonfinite_rows(x) -> np.ndarray:
        """(N,) bool: the samples of a host batch with NaN or Inf values."""
        if not np.issubdtype(x.dtype, np.floating):
            return np.zeros(x.shape[0], dtype=bool)
        return ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)

    def _is_one_sample(self, x) -> bool:
        """True when ``x`` has the shape of one sample (no batch axis)."""
        shape = getattr(x, "shape", None)
        if shape is None:
            cai = getattr(x, "__cuda_array_interface__", None)
            try:
                shape = cai["shape"] if cai is not None else np.shape(x)
            except Exception:  # noqa: BLE001 - explain_batch names what is wrong with x
                return False
        return tuple(int(s) for s in shape) == self.sample_shape

    def _to_user_layout(self, R):
        if not self._channels_last:
            return R
        if isinstance(R, np.ndarray):
            return np.moveaxis(R, 1, -1)
        return self.backend.moveaxis_last(R)

    # device backends (fastlrp.backends.cuda) keep arrays on the device; these
    # move what the engine itself needs (outputs for the seeds, report sums)
    def _dev(self, a):
        to = getattr(self.backend, "to_device", None)
        return a if to is None else to(a)

    def _host(self, a):
        to = getattr(self.backend, "to_host", None)
        return a if to is None else to(a)

    def _rows(self, a, s, e):
        """Samples s..e of a host or device batch."""
        return a[s:e] if isinstance(a, np.ndarray) else self.backend.batch_slice(a, s, e)

    def _concat(self, parts):
        """Host or device batches joined along the sample axis."""
        return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else self.backend.concat_batch(parts)

    def _prepare_device_input(self, x):
        """A GPU array (torch CUDA, CuPy, ...): validated and used in place."""
        d = self.backend.wrap(x)
        shape = self.graph.input_shape
        if self._channels_last:
            raise InputError("channels-last models take GPU input in NCHW only through NumPy for now; "
                             "pass a NumPy array or a channels-first tensor to a channels-first model")
        batched = self._is_batched(d.shape, shape)
        return (d if batched else d.reshape((1,) + shape)), batched

    @staticmethod
    def _is_batched(got, shape) -> bool:
        """True for (N, *shape) with N >= 1, False for one sample ``shape``; else InputError."""
        got = tuple(got)
        if got == shape:
            return False
        if len(got) == len(shape) + 1 and got[1:] == shape:
            if got[0] == 0:
                raise InputError("input has an empty batch")
            return True
        raise InputError(
            f"input of shape {got} does not fit the model: expected (batch, {', '.join(map(str, shape))})"
            f" or one sample of shape {shape}"
        )

    # -- passes ----------------------------------------------------------------------
    def _forward(self, x):
        return self._plan.forward(self._dev(x))

    def forward(self, x) -> np.ndarray:
        """The model's output for ``x`` (with the batch axis if ``x`` had one)."""
        xb, batched = self._prepare_input(x)
        out, _ = self._forward(xb)
        out = self._host(out)
        return out if batched else out[0]

    def _backward(self, ctxs, seed, report=None):
        R = self._plan.relevance(ctxs, self._dev(seed), report)
        if R is None:  # the output does not depend on the input
            R = self._dev(np.zeros((seed.shape[0],) + self.graph.input_shape, dtype=self.dtype))
        return R

    def explain(self, x, target=None, return_layers=False):
        """Relevance of each input feature for the selected output(s).

        Parameters
        ----------
        x : array_like
            One batch ``(N, *input_shape)`` or one sample ``input_shape``
            (channels-last for channels-last Keras models).
        target : None, int, array of int, float array or "all"
            ``None``: each sample's arg-max output. ``int``: that output for all
            samples. ``(N,)`` ints: one output per sample. ``(N, K)`` ints: K
            outputs per sample, sharing one forward pass (result gets a K axis
            after the batch axis). ``"all"``: every output. A float array of the
            output's shape is the seed relevance, used as given. Otherwise the
            seed is the selected output's value, so the relevance sums to the
            explained logit (up to what biases and stabilizers absorb). For one
            sample, ``(K,)`` ints are K targets of it. See :mod:`fastlrp.targets`.
        return_layers : bool
            Also return a :class:`RelevanceReport` of per-node relevance sums.

        Returns
        -------
        numpy.ndarray
            Relevance with ``x``'s shape (plus a target axis for several targets),
            or ``(relevance, report)`` with ``return_layers``. GPU input gives
            relevance of the same kind (a torch CUDA tensor, a CuPy array).

        :meth:`explain_batch` is the same computation with the batch's outputs
        and explained indices as well.
        """
        one = self._is_one_sample(x)
        if one:
            target = one_sample_target(target, self.graph.output_shape)
        res = self.explain_batch(x, target, return_layers=return_layers)
        R = res.relevance.reshape(tuple(res.relevance.shape[1:])) if one else res.relevance
        return (R, res.report) if return_layers else R

    __call__ = explain

    def explain_batch(self, x, target=None, *, return_layers=False, nonfinite="raise") -> "BatchResult":
        """Explain one batch: its outputs, the targets explained and their relevance.

        Parameters
        ----------
        x : array_like
            ``(N, *input_shape)`` (one sample without the batch axis counts as a
            batch of one), NumPy or anything convertible, or a GPU array for the
            CUDA backend.
        target :
            Any form of :func:`fastlrp.targets.parse_target` for these N samples,
            or a :class:`~fastlrp.targets.TargetSpec`.
        return_layers : bool
            Also compute :class:`RelevanceReport` per-node relevance sums.
        nonfinite : "raise" or "skip"
            Samples with NaN/Inf in their input or in the model's output raise
            :class:`InputError`, or (host input only) are skipped: not explained,
            with NaN relevance and output, target -1 and ``valid`` False.

        On a device backend a host batch is staged to the device; when the device
        runs out of memory the batch is explained in halves (recursively).
        """
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        skip = nonfinite == "skip"
        be = self.backend
        on_device = bool(getattr(be, "is_device", False)) and be.accepts(x)
        if on_device:
            if skip:
                raise InputError("nonfinite='skip' needs host input (a NumPy array); GPU input is explained whole")
            xb, _ = self._prepare_device_input(x)
        else:
            xb, _ = self._prepare_input(x, check_finite=not skip)
        N = xb.shape[0]
        spec = parse_target(target, self.graph.output_shape, n_samples=N)
        spec.check_batch(N)
        rows = None  # the samples explained, when some are skipped for their input
        if skip:
            bad = self._nonfinite_rows(xb)
            if bad.any():
                rows = np.flatnonzero(~bad)
                xb, spec = xb[rows], spec.select(rows)
        if rows is not None and rows.size == 0:
            part = self._nothing(spec, return_layers)
        else:
            if not on_device and getattr(be, "is_device", False):
                xb = be.stage(xb)
            part = self._split(xb, spec, return_layers, skip)
        out, idx, ok, results, reports = part
        if on_device:
            R = be.stack_targets(results) if spec.multi else results[0]
            R = be.like(R, x)
        else:
            results = [np.asarray(self._host(r)) for r in results]
            R = np.stack(results, axis=1) if spec.multi else results[0]
        if idx is not None:
            idx = np.ascontiguousarray(idx if spec.multi else idx[:, 0], dtype=np.int64)
        valid = ok
        if rows is not None or not ok.all():
            # only the valid samples' results are kept, in rows of N
            keep = (np.arange(N) if rows is None else rows)[ok]
            R, out = _scatter(R[ok], keep, N, np.nan), _scatter(out[ok], keep, N, np.nan)
            idx = None if idx is None else _scatter(idx[ok], keep, N, -1)
            reports = [_scatter_report(r, ok, keep, N) for r in reports]
            valid = np.zeros(N, dtype=bool)
            valid[keep] = True
        report = None
        if return_layers:
            report = reports if spec.multi else reports[0]
        return BatchResult(relevance=R, output=out, targets=idx, valid=valid, report=report)

    def _split(self, xb, spec, return_layers, skip):
        """One batch; on device out-of-memory, the two halves in turn (recursively).
        Returns (output, target indices or None, output finite (N,), [relevance per
        target], [report per target])."""
        try:
            return self._explain_prepared(xb, spec, return_layers, skip)
        except DeviceOutOfMemory as e:
            # leave the except block first: its traceback holds the failed
            # attempt's device arrays
            err = (str(e), e.requested, e.free)
        N = xb.shape[0]
        if N <= 1:
            raise DeviceOutOfMemory(f"explaining one sample needs more device memory than is free: {err[0]}",
                                    err[1], err[2])
        h = N // 2
        a, b = (self._split(self._rows(xb, s, e), spec.select(slice(s, e)), return_layers, skip)
                for s, e in ((0, h), (h, N)))
        return (np.concatenate([a[0], b[0]]),
                None if a[1] is None else np.concatenate([a[1], b[1]]),
                np.concatenate([a[2], b[2]]),
                [self._concat([ra, rb]) for ra, rb in zip(a[3], b[3])],
                [_merge_reports(ra, rb) for ra, rb in zip(a[4], b[4])])

    def _explain_prepared(self, xb, spec, return_layers, skip):
        out, ctxs = self._forward(xb)
        out = self._host(out)
        ok = np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)
        if not ok.all() and not skip:
            bad = np.flatnonzero(~ok)
            raise InputError(f"the model's output is NaN or Inf for sample(s) {bad[:10].tolist()}")
        idx = spec.indices(out)
        seeds = spec.seeds(out, dtype=self.dtype)
        results, reports = [], []
        for seed in seeds:
            if not ok.all():  # the skipped samples get no relevance
                seed = seed.copy()
                seed[~ok] = 0
            rep = self._new_report(seed.reshape(seed.shape[0], -1).sum(axis=1)) if return_layers else None
            if rep is not None:
                reports.append(rep)
            results.append(self._to_user_layout(self._backward(ctxs, seed, rep)))
        return out, idx, ok, results, reports

    def _nothing(self, spec, return_layers):
        """The (empty) part result when every sample of a batch is skipped."""
        out = np.zeros((0,) + tuple(self.graph.output_shape), dtype=self.dtype)
        idx = None if spec.kind == "seed" else np.zeros((0, spec.k), dtype=np.int64)
        results = [np.zeros((0,) + self.sample_shape, dtype=self.dtype) for _ in range(spec.k)]
        reports = []
        if return_layers:
            for _ in range(spec.k):
                rep = self._new_report(np.zeros(0, dtype=self.dtype))
                for n in rep.names:
                    rep.relevance_out[n] = rep.relevance_in[n] = np.zeros(0, dtype=self.dtype)
                reports.append(rep)
        return out, idx, np.zeros(0, dtype=bool), results, reports

    def _new_report(self, explained):
        nodes = [n for n in self._nodes if n.op != "input"]
        return RelevanceReport(names=[n.name for n in nodes], ops=[n.op for n in nodes],
                               rules=[str(self.rules[n.name]) for n in nodes],
                               relevance_out={}, relevance_in={}, explained=explained)

    def explain_dataset(self, source, out, target=None, batch_size=None, **kwargs):
        """Explain a whole dataset into a resumable store: ``fastlrp.dataset.explain_dataset(self, ...)``
        (see :func:`fastlrp.dataset.explain_dataset`)."""
        from .dataset import explain_dataset  # fastlrp.dataset does not import this module: no cycle

        return explain_dataset(self, source, out, target=target, batch_size=batch_size, **kwargs)


@dataclass
class BatchResult:
    """What :meth:`Explainer.explain_batch` computed for a batch of N samples.

    ``relevance``: ``(N, *sample_shape)``, or ``(N, K, *sample_shape)`` when the
    target asks for K outputs per sample (NumPy; for GPU input an array of the
    input's kind). ``output``: the model's output ``(N, *output_shape)`` (NumPy).
    ``targets``: the output index explained, ``(N,)`` or ``(N, K)`` int64, or
    None when the target was seed relevance. ``valid``: ``(N,)`` bool, False for
    samples skipped with ``nonfinite='skip'`` (their relevance and output are NaN,
    their target -1). ``report``: the :class:`RelevanceReport` (a list of K for
    several targets) with ``return_layers``, else None.
    """

    relevance: object
    output: np.ndarray
    targets: Optional[np.ndarray]
    valid: np.ndarray
    report: object = None


def _scatter(a, rows, n, fill):
    """``a`` placed at ``rows`` of ``n`` rows, the others ``fill``."""
    full = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
    full[rows] = a
    return full


def _scatter_report(rep: RelevanceReport, ok, rows, n) -> RelevanceReport:
    """A report of the explained samples spread over the batch's n rows (NaN for skipped ones)."""
    def f(v):
        return _scatter(np.asarray(v, dtype=np.float64)[ok], rows, n, np.nan)

    return RelevanceReport(names=rep.names, ops=rep.ops, rules=rep.rules,
                           relevance_out={k: f(v) for k, v in rep.relevance_out.items()},
                           relevance_in={k: f(v) for k, v in rep.relevance_in.items()},
                           explained=f(rep.explained))


def _merge_reports(a: RelevanceReport, b: RelevanceReport) -> RelevanceReport:
    cat = np.concatenate
    return RelevanceReport(
        names=a.names, ops=a.ops, rules=a.rules,
        relevance_out={k: cat([a.relevance_out[k], b.relevance_out[k]]) for k in a.relevance_out},
        relevance_in={k: cat([a.relevance_in[k], b.relevance_in[k]]) for k in a.relevance_in},
        explained=cat([a.explained, b.explained]),
    )
