"""The op registry: every layer type of the IR declared once, found by its name.

Each module here declares one op family (spec, shape inference, rules, float64
reference): :mod:`~fastlrp.ops.linear` (dense, conv), :mod:`~fastlrp.ops.pool`
(maxpool, avgpool, adaptive_avgpool), :mod:`~fastlrp.ops.routing` (input,
reshape, permute, concat, pad), :mod:`~fastlrp.ops.merge` (add, mul, const),
:mod:`~fastlrp.ops.elementwise` (activation, batchnorm), :mod:`~fastlrp.ops.norm`
(layernorm), :mod:`~fastlrp.ops.attention` (matmul, softmax). Backends register
their kernels per op name in :mod:`fastlrp.backends.dispatch`. See
docs/adding-an-op.md for adding a layer type.
"""

from __future__ import annotations

# each family module registers its ops on import (this order is the order of ops.names())
from . import linear, pool, routing, merge, elementwise, norm, attention  # noqa: F401,I001
from .spec import OpSpec, RefOp, names, register_op, spec, stabilize

__all__ = ["OpSpec", "RefOp", "names", "register_op", "spec", "stabilize"]
