"""The contract between the engine and a backend.

For every node of a graph, the engine asks the backend once per Explainer for a
:class:`NodeOp` (``Backend.prepare``): this is where model-constant work is done
(weight transforms such as W+, W-, W^2, flat counts, uploads to a device).
Then, per batch:

- ``out, ctx = op.forward(inputs)``: the layer's output and whatever the
  relevance pass will need (inputs, z, stabilized denominators, ...);
- ``[R_in, ...] = op.relevance(ctx, R)``: relevance at each input, given the
  relevance ``R`` at the output (same shape as ``out``).

All arrays carry a leading batch axis. ``relevance`` may be called several times
with the same ``ctx`` (several targets share one forward pass), so it must not
modify ``ctx``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class NodeOp(Protocol):
    def forward(self, inputs: list) -> tuple[np.ndarray, Any]: ...

    def relevance(self, ctx: Any, R: np.ndarray) -> list: ...


class Backend(Protocol):
    name: str
    dtype: np.dtype

    def prepare(self, graph, node, rule) -> NodeOp: ...


class BackendError(RuntimeError):
    """A backend is missing or cannot run this node."""


class DeviceOutOfMemory(MemoryError):
    """A device allocation did not fit.  The Explainer splits the batch and
    retries; a single sample that does not fit is reported with the sizes."""

    def __init__(self, message: str, requested: int = 0, free=None):
        super().__init__(message)
        self.requested, self.free = requested, free


class Float32Op:
    """Runs a reference NodeOp (NumPy code that keeps its inputs' dtype) on float32
    inputs and keeps the outputs float32: the float32 backends' one fallback for
    ops and rule variants without a kernel of their own (fastlrp.backends.dispatch)."""

    def __init__(self, op):
        self.op = op

    def forward(self, inputs: list):
        out, ctx = self.op.forward([np.ascontiguousarray(i, dtype=np.float32) for i in inputs])
        return np.asarray(out, dtype=np.float32), ctx

    def relevance(self, ctx, R):
        rs = self.op.relevance(ctx, R)
        return [None if r is None else np.asarray(r, dtype=np.float32) for r in rs]


def zbox_bounds(node, rule, in_shape: tuple) -> tuple:
    """ZBox's ``low`` and ``high`` broadcast to one sample's input shape (float64,
    contiguous); BackendError naming the node when they do not broadcast."""
    try:
        lo = np.broadcast_to(np.asarray(rule.low, dtype=np.float64), in_shape)
        hi = np.broadcast_to(np.asarray(rule.high, dtype=np.float64), in_shape)
    except ValueError:
        raise BackendError(
            f"{node.describe()}: ZBox bounds of shapes {np.shape(rule.low)} / {np.shape(rule.high)} "
            f"do not broadcast to the input shape {in_shape}"
        ) from None
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)
