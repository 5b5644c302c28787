"""The compiled CPU backend (:mod:`fastlrp._core`), float32.

Dense layers with a parametric rule run in the C++ kernels; every other node
(and any rule the kernels do not cover yet) is delegated to the float64
reference backend, with float32 in and out, so a graph always runs end to end.

Weight transforms (W+, W-, Wu, Wd, W^2) are not precomputed: the kernels split
signs while loading each weight, so ``prepare`` only makes the parameters
float32 and C-contiguous and broadcasts ZBox bounds.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _ext
from .base import BackendError

__all__ = ["CpuBackend", "DENSE_RULES"]

#: Rule kinds with a compiled dense kernel.
DENSE_RULES = ("epsilon", "zplus", "alphabeta", "gamma", "zbox", "flat", "wsquare")


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class _DenseOp:
    """A dense node with one parametric rule, run by ``fastlrp._core``."""

    def __init__(self, core, graph, node, rule):
        self.node, self.rule = node, rule
        W = np.asarray(node.params["weight"])
        if W.ndim != 2:
            raise BackendError(f"{node.describe()}: dense weight must be 2-d (out, in), got shape {W.shape}")
        self.W = _f32(W)
        self.out_features, self.in_features = self.W.shape
        in_shape = tuple(graph[node.inputs[0]].shape)
        if in_shape and int(np.prod(in_shape)) != self.in_features:
            raise BackendError(
                f"{node.describe()}: input shape {in_shape} does not match weight shape {W.shape}"
            )
        b = node.params.get("bias")
        self.b = None if b is None else _f32(np.asarray(b).reshape(-1))
        if self.b is not None and self.b.shape != (self.out_features,):
            raise BackendError(f"{node.describe()}: bias has shape {self.b.shape}, expected ({self.out_features},)")
        self._kernel = self._bind(core, rule, in_shape or (self.in_features,))

    def _bind(self, core, r, in_shape):
        k, W, b = r.kind, self.W, self.b
        if k == "epsilon":
            return lambda x, R: core.dense_epsilon(x, W, b, R, r.epsilon, r.zero_bias)
        if k == "zplus":
            return lambda x, R: core.dense_zplus(x, W, b, R, r.stabilizer, r.zero_bias)
        if k == "alphabeta":
            return lambda x, R: core.dense_alphabeta(x, W, b, R, r.alpha, r.beta, r.stabilizer, r.zero_bias)
        if k == "gamma":
            return lambda x, R: core.dense_gamma(x, W, b, R, r.gamma, r.stabilizer, r.zero_bias)
        if k == "zbox":
            try:
                low = _f32(np.broadcast_to(np.asarray(r.low, dtype=np.float32), in_shape).reshape(-1))
                high = _f32(np.broadcast_to(np.asarray(r.high, dtype=np.float32), in_shape).reshape(-1))
            except ValueError:
                raise BackendError(
                    f"{self.node.describe()}: ZBox bounds of shapes {np.shape(r.low)} / {np.shape(r.high)} "
                    f"do not broadcast to the input shape {in_shape}"
                ) from None
            return lambda x, R: core.dense_zbox(x, W, R, low, high, r.stabilizer)
        if k == "flat":
            return lambda x, R: core.dense_flat(x, W, R, r.stabilizer)
        if k == "wsquare":
            return lambda x, R: core.dense_wsquare(x, W, b, R, r.stabilizer, r.zero_bias)
        raise BackendError(f"{self.node.describe()}: no compiled dense kernel for rule '{k}'")

    def forward(self, inputs: list) -> tuple[np.ndarray, Any]:
        x = np.asarray(inputs[0])
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != self.in_features:
            raise BackendError(
                f"{self.node.describe()}: input of shape {x.shape} (batch first) does not fit "
                f"{self.in_features} in-features"
            )
        x2 = _f32(x.reshape(x.shape[0], self.in_features))
        out = x2 @ self.W.T
        if self.b is not None:
            out += self.b
        return out, x2

    def relevance(self, ctx: np.ndarray, R: np.ndarray) -> list:
        x2 = ctx
        R2 = _f32(np.asarray(R).reshape(x2.shape[0], self.out_features))
        return [self._kernel(x2, R2)]


class _Float64Op:
    """Runs a reference (float64) NodeOp behind float32 inputs and outputs."""

    def __init__(self, op):
        self.op = op

    def forward(self, inputs: list) -> tuple[np.ndarray, Any]:
        out, ctx = self.op.forward([np.asarray(a, dtype=np.float64) for a in inputs])
        return np.asarray(out, dtype=np.float32), ctx

    def relevance(self, ctx: Any, R: np.ndarray) -> list:
        rs = self.op.relevance(ctx, np.asarray(R, dtype=np.float64))
        return [None if r is None else np.asarray(r, dtype=np.float32) for r in rs]


class CpuBackend:
    """Compiled C++ kernels, float32, OpenMP threads.

    Parameters
    ----------
    num_threads : int, optional
        Threads for the kernels (process-wide setting of ``fastlrp._core``);
        default: leave it as it is (OpenMP's default, usually all cores).
    """

    name = "cpu"
    dtype = np.dtype(np.float32)

    def __init__(self, num_threads: Optional[int] = None):
        if _ext.core is None:
            raise BackendError(f"the compiled CPU backend is not available: {_ext.core_error}")
        self.core = _ext.core
        if num_threads is not None:
            self.core.set_num_threads(int(num_threads))
        self._reference = None

    def prepare(self, graph, node, rule):
        if node.op == "dense" and rule.kind in DENSE_RULES:
            return _DenseOp(self.core, graph, node, rule)
        if self._reference is None:
            from .reference import ReferenceBackend

            self._reference = ReferenceBackend()
        return _Float64Op(self._reference.prepare(graph, node, rule))
