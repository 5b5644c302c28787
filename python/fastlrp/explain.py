"""The engine: one forward pass keeping what each rule needs, then the relevance pass."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .composites import Composite, get_composite
from .graph import Graph

__all__ = ["Explainer", "InputError", "RelevanceReport", "get_backend"]


class InputError(ValueError):
    """The data given to an Explainer cannot be explained as it is."""


def get_backend(backend="auto"):
    """Return a backend instance for a name (``"auto"``, ``"reference"``, ``"cpu"``,
    ``"numba"``, ``"cuda"``) or pass a backend object through."""
    if not isinstance(backend, str):
        return backend
    name = backend.lower()
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
    """

    def __init__(self, graph: Graph, composite="epsilon_plus", backend="auto"):
        if not isinstance(graph, Graph):
            raise TypeError(
                f"Explainer needs a fastlrp Graph, got {type(graph).__name__}; "
                "convert models with fastlrp.from_torch(...) or fastlrp.from_keras(...)"
            )
        self.graph = graph
        self.composite: Composite = get_composite(composite)
        self.rules = self.composite.resolve(graph)
        self.backend = get_backend(backend)
        self.dtype = np.dtype(self.backend.dtype)
        # only nodes the output depends on are run
        needed = {graph.output}
        for n in reversed(graph.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        self._nodes = [n for n in graph.nodes if n.name in needed]
        self._ops = {n.name: self.backend.prepare(graph, n, self.rules[n.name]) for n in self._nodes}
        self._channels_last = graph.meta.get("layout") == "channels_last" and len(graph.input_shape) > 1

    def __repr__(self):
        return f"Explainer({self.composite.name}, backend={self.backend.name}, {len(self._nodes)} nodes)"

    # -- input handling --------------------------------------------------------------
    def _prepare_input(self, x):
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
        shape = self.graph.input_shape
        if self._channels_last:
            shape = shape[1:] + shape[:1]
        batched = self._is_batched(x.shape, shape)
        if not batched:
            x = x[None]
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1) if np.issubdtype(x.dtype, np.floating) else None
        if bad is not None and bad.any():
            idx = np.flatnonzero(bad)
            raise InputError(
                f"input has NaN or Inf values in sample(s) {idx[:10].tolist()}{' ...' if len(idx) > 10 else ''}"
            )
        if self._channels_last:
            x = np.moveaxis(x, -1, 1)
        return np.ascontiguousarray(x, dtype=self.dtype), batched

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
        acts, ctxs = {}, {}
        consumers_left = {n.name: 0 for n in self._nodes}
        for n in self._nodes:
            for i in n.inputs:
                consumers_left[i] += 1
        for n in self._nodes:
            ins = [self._dev(x)] if n.op == "input" else [acts[i] for i in n.inputs]
            out, ctx = self._ops[n.name].forward(ins)
            acts[n.name] = out
            ctxs[n.name] = ctx
            for i in n.inputs:
                consumers_left[i] -= 1
                if consumers_left[i] == 0 and i != self.graph.output:
                    del acts[i]
        return acts[self.graph.output], ctxs

    def forward(self, x) -> np.ndarray:
        """The model's output for ``x`` (with the batch axis if ``x`` had one)."""
        xb, batched = self._prepare_input(x)
        out, _ = self._forward(xb)
        out = self._host(out)
        return out if batched else out[0]

    def _backward(self, ctxs, seed, report=None):
        R = {self.graph.output: self._dev(seed)}
        for n in reversed(self._nodes):
            r = R.pop(n.name, None)
            if r is None:
                continue
            if n.op == "input":
                return r
            ins = self._ops[n.name].relevance(ctxs[n.name], r)
            if report is not None:
                rh = self._host(r)
                report.relevance_out[n.name] = rh.reshape(rh.shape[0], -1).sum(axis=1)
                report.relevance_in[n.name] = sum(
                    ih.reshape(ih.shape[0], -1).sum(axis=1) for ih in map(self._host, ins))
            for name, ri in zip(n.inputs, ins):
                R[name] = ri if name not in R else R[name] + ri
        # the output does not depend on the input
        return self._dev(np.zeros((seed.shape[0],) + self.graph.input_shape, dtype=self.dtype))

    def _seeds(self, out, target, batched):
        """Seed relevance arrays, one per target column: list of (N, *out) arrays."""
        N = out.shape[0]
        flat = out.reshape(N, -1)
        M = flat.shape[1]
        if target is None:
            return [self._onehot(flat, np.argmax(flat, axis=1), out.shape)], False
        if isinstance(target, str):
            if target != "all":
                raise InputError(f"target '{target}' is not understood (use None, an int, an array, or 'all')")
            return [self._onehot(flat, np.full(N, k), out.shape) for k in range(M)], True
        if hasattr(target, "detach") and hasattr(target, "cpu"):
            target = target.detach().cpu().numpy()
        t = np.asarray(target)
        if np.issubdtype(t.dtype, np.floating):
            want = out.shape if batched else out.shape[1:]
            if t.shape != tuple(want):
                raise InputError(f"a float target is the seed relevance and must have the output's shape {tuple(want)}, got {t.shape}")
            if not np.isfinite(t).all():
                raise InputError("the seed relevance has NaN or Inf values")
            return [np.ascontiguousarray(t.reshape(out.shape), dtype=self.dtype)], False
        if not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"target must be None, int, an int array or a float seed array; got dtype {t.dtype}")
        if t.ndim == 0:
            idx = np.full(N, int(t))
            multi = False
        elif t.ndim == 1 and t.shape[0] == N and batched:
            idx = t
            multi = False
        elif t.ndim == 2 and t.shape[0] == N and batched:
            idx = t
            multi = True
        elif t.ndim == 1 and not batched:
            idx = t[None, :]
            multi = True
        else:
            raise InputError(
                f"target of shape {t.shape} does not fit {N} sample(s): give an int, one int per sample ({N},), "
                f"or ({N}, K) ints for K targets per sample"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= M):
            raise InputError(f"target index out of range: the model has {M} output(s), got {idx.min()}..{idx.max()}")
        if multi:
            return [self._onehot(flat, idx[:, k], out.shape) for k in range(idx.shape[1])], True
        return [self._onehot(flat, idx, out.shape)], False

    def _onehot(self, flat, idx, shape):
        seed = np.zeros_like(flat)
        rows = np.arange(flat.shape[0])
        seed[rows, idx] = flat[rows, idx]
        return seed.reshape(shape)

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
            explained logit (up to what biases and stabilizers absorb).
        return_layers : bool
            Also return a :class:`RelevanceReport` of per-node relevance sums.

        Returns
        -------
        numpy.ndarray
            Relevance with ``x``'s shape (plus a target axis for several targets),
            or ``(relevance, report)`` with ``return_layers``.
        """
        be = self.backend
        on_device = bool(getattr(be, "is_device", False)) and be.accepts(x)
        xb, batched = self._prepare_device_input(x) if on_device else self._prepare_input(x)
        if not on_device and getattr(be, "is_device", False):
            xb = be.stage(xb)
        results, multi, reports = self._explain_split(xb, target, batched, return_layers)
        if on_device:
            R = be.stack_targets(results) if multi else results[0]
            if not batched:
                R = R.reshape(R.shape[1:])
            R = be.like(R, x)
        else:
            results = [np.asarray(self._host(r)) for r in results]
            R = np.stack(results, axis=1) if multi else results[0]
            if not batched:
                R = R[0]
        if return_layers:
            return R, (reports if multi else reports[0])
        return R

    def _explain_split(self, xb, target, batched, return_layers):
        """One batch; on device out-of-memory, the two halves in turn (recursively)."""
        from .backends.base import DeviceOutOfMemory

        try:
            return self._explain_batch(xb, target, batched, return_layers)
        except DeviceOutOfMemory as e:
            # leave the except block first: its traceback holds the failed
            # attempt's device arrays
            err = (str(e), e.requested, e.free)
        N = xb.shape[0]
        if N <= 1:
            raise DeviceOutOfMemory(f"explaining one sample needs more device memory than is free: {err[0]}",
                                    err[1], err[2])
        h = N // 2
        parts = []
        for s, t in ((0, h), (h, N)):
            parts.append(self._explain_split(self.backend.batch_slice(xb, s, t), _slice_target(target, s, t, N),
                                             batched, return_layers))
        multi = parts[0][1]
        results = [self.backend.concat_batch([p[0][k] for p in parts]) for k in range(len(parts[0][0]))]
        reports = [_merge_reports(parts[0][2][k], parts[1][2][k]) for k in range(len(parts[0][2]))]
        return results, multi, reports

    def _explain_batch(self, xb, target, batched, return_layers):
        out, ctxs = self._forward(xb)
        out = self._host(out)
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1))
            raise InputError(f"the model's output is NaN or Inf for sample(s) {bad[:10].tolist()}")
        seeds, multi = self._seeds(out, target, batched)
        results, reports = [], []
        for seed in seeds:
            rep = None
            if return_layers:
                rep = RelevanceReport(
                    names=[n.name for n in self._nodes if n.op != "input"],
                    ops=[n.op for n in self._nodes if n.op != "input"],
                    rules=[str(self.rules[n.name]) for n in self._nodes if n.op != "input"],
                    relevance_out={}, relevance_in={},
                    explained=seed.reshape(seed.shape[0], -1).sum(axis=1),
                )
                reports.append(rep)
            results.append(self._to_user_layout(self._backward(ctxs, seed, rep)))
        return results, multi, reports

    __call__ = explain

    def explain_dataset(self, source, out, target=None, batch_size=None, **kwargs):
        """Explain a whole dataset into a resumable store (see :func:`fastlrp.dataset.explain_dataset`)."""
        from .dataset import explain_dataset

        return explain_dataset(self, source, out, target=target, batch_size=batch_size, **kwargs)



def _slice_target(target, s, e, N):
    """The part of a per-sample target for samples s..e of N (scalars pass through)."""
    if target is None or isinstance(target, (str, int, np.integer)):
        return target
    if hasattr(target, "detach") and hasattr(target, "cpu"):
        target = target.detach().cpu().numpy()
    t = np.asarray(target)
    return t[s:e] if t.ndim >= 1 and t.shape[0] == N else target


def _merge_reports(a: "RelevanceReport", b: "RelevanceReport") -> "RelevanceReport":
    cat = np.concatenate
    return RelevanceReport(
        names=a.names, ops=a.ops, rules=a.rules,
        relevance_out={k: cat([a.relevance_out[k], b.relevance_out[k]]) for k in a.relevance_out},
        relevance_in={k: cat([a.relevance_in[k], b.relevance_in[k]]) for k in a.relevance_in},
        explained=cat([a.explained, b.explained]),
    )
