"""CUDA backend entry point (stub until the GPU engine lands).

Constructing :class:`CudaBackend` fails with a clear :class:`BackendError` unless
``fastlrp._cuda`` was built and a CUDA device is usable. Today only dense layers
run on the GPU (host arrays in and out, copied per call); every other node is
delegated to the compiled CPU backend (or the reference backend without it).
"""

from __future__ import annotations

import numpy as np

from .. import _ext
from .base import BackendError

__all__ = ["CudaBackend"]


class CudaBackend:
    """Float32 CUDA kernels from :mod:`fastlrp._cuda`."""

    name = "cuda"
    dtype = np.dtype(np.float32)

    def __init__(self):
        if _ext.cuda is None:
            raise BackendError(f"CUDA backend not built: {_ext.cuda_error}")
        if not _ext.cuda_available():
            raise BackendError(f"CUDA backend built but no GPU is usable: {_ext.cuda_unavailable_reason()}")
        self.cuda = _ext.cuda
        self._host = None

    def _host_backend(self):
        if self._host is None:
            if _ext.core is not None:
                from .cpu import CpuBackend

                self._host = CpuBackend()
            else:
                from .cpu import _Float64Op
                from .reference import ReferenceBackend

                ref = ReferenceBackend()
                self._host = type("_Ref32", (), {"prepare": lambda _s, g, n, r: _Float64Op(ref.prepare(g, n, r))})()
        return self._host

    def prepare(self, graph, node, rule):
        from .cpu import DENSE_RULES, _DenseOp

        if node.op == "dense" and rule.kind in DENSE_RULES:
            # _cuda exposes the same dense_* functions as _core (same validation);
            # only the kernels behind them differ.
            return _DenseOp(self.cuda, graph, node, rule)
        return self._host_backend().prepare(graph, node, rule)
