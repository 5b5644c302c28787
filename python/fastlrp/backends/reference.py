"""The float64 NumPy reference backend: slow, plain, and the oracle for all others.

It registers no kernels: every node runs its op's reference implementation
from the registry (:meth:`fastlrp.ops.OpSpec.reference`, in the op family's
module under :mod:`fastlrp.ops`) in float64 — the one fallback of
:mod:`fastlrp.backends.dispatch` at float64.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Node
from ..ops.linear import conv_backward, conv_forward
from ..ops.spec import stabilize
from .dispatch import prepare as dispatch_prepare

__all__ = ["ReferenceBackend", "stabilize", "conv_forward", "conv_backward"]


class ReferenceBackend:
    """Float64 NumPy, every node and rule, written to be obviously correct."""

    name = "reference"
    dtype = np.dtype(np.float64)

    def prepare(self, graph: Graph, node: Node, rule):
        return dispatch_prepare(self, graph, node, rule)
