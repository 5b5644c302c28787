"""Which code runs a node: the backend's kernel for its op, else the one fallback.

Backends register kernel factories by op name::

    @register_kernel("cpu", "maxpool", rules=("winner",))
    def _maxpool(backend, graph, node, rule):
        return MaxPoolKernel(backend, graph, node)

A factory builds the prepared node (``forward`` / ``relevance``, see
:mod:`fastlrp.backends.base`) or returns None for a variant it does not run
(an attribute value without a kernel). ``rules`` lists the rule kinds the kernel
runs; other rules of the op go to the fallback. ``options`` lists the rule options
of :data:`fastlrp.rules.OPTION_DEFAULTS` (iNNvestigate's conventions: ``guard``,
``whole_bias``, ``split_inputs``) the kernel runs when a rule sets them; a rule that
sets any other goes to the fallback.

The fallback is the same for every backend: the op's float64 reference from
the registry (:meth:`fastlrp.ops.OpSpec.reference`), which keeps its inputs'
dtype, run on the backend's float32 arrays (:class:`~fastlrp.backends.base.Float32Op`).
A device backend (``is_device``) copies the node's inputs to the host and its
outputs back, and warns once per op and rule kind that this costs a round trip.
``fastlrp info`` lists which ops each backend runs with a kernel
(:func:`coverage`).
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable

import numpy as np

from .. import ops
from ..rules import rule_options
from .base import BackendError, Float32Op

__all__ = ["register_kernel", "prepare", "fallback", "coverage", "HostRoundTrip"]

_KERNELS: dict = {}
_WARNED: set = set()
_WARN_LOCK = threading.Lock()


def register_kernel(backend: str, *op_names: str, rules: tuple | None = None, variants: str = "",
                    options: tuple = ()) -> Callable:
    """Decorator: ``factory(backend, graph, node, rule)`` runs ``op_names`` on the
    backends whose ``kernels`` attribute (else ``name``) is ``backend``.
    ``variants`` says, for listings, which attribute values the factory runs when it
    declines others (returns None); ``options``, which non-default rule options it runs."""

    def deco(factory):
        for op in op_names:
            ops.spec(op)  # an unknown op is an error at registration
            _KERNELS[(backend, op)] = (factory, None if rules is None else tuple(rules), variants, frozenset(options))
        return factory

    return deco


def _family(backend) -> str:
    return getattr(backend, "kernels", backend.name)


def prepare(backend, graph, node, rule):
    """The prepared node for ``backend``: its kernel where it has one for this op
    and rule, else :func:`fallback`."""
    allowed = ops.spec(node.op).rules
    if rule.kind not in allowed:
        raise BackendError(f"{node.describe()}: rule {rule} does not apply to a '{node.op}' node "
                           f"(allowed: {', '.join(allowed)})")
    entry = _KERNELS.get((_family(backend), node.op))
    if entry is not None:
        factory, kinds, _, options = entry
        if (kinds is None or rule.kind in kinds) and options.issuperset(rule_options(rule)):
            op = factory(backend, graph, node, rule)
            if op is not None:
                return op
    return fallback(backend, graph, node, rule)


def fallback(backend, graph, node, rule):
    """The one fallback: the registry's reference implementation in the backend's dtype."""
    ref = ops.spec(node.op).reference(graph, node, rule)
    if np.dtype(backend.dtype) == np.float64:
        return ref
    op = Float32Op(ref)
    if getattr(backend, "is_device", False):
        return HostRoundTrip(backend, op, node, rule)
    return op


class HostRoundTrip:
    """A node without a device kernel on a device backend: inputs copied to the
    host, the float32 fallback run there, outputs copied back."""

    def __init__(self, backend, op, node, rule):
        self.be, self.op, self.node = backend, op, node
        key = (_family(backend), node.op, rule.kind)
        with _WARN_LOCK:
            first = key not in _WARNED
            _WARNED.add(key)
        if first:
            warnings.warn(f"fastlrp {backend.name}: {node.describe()} (rule {rule.kind}) runs on the host: "
                          "no device kernel for it, so its input and output are copied "
                          "(warned once per op and rule)", RuntimeWarning, stacklevel=4)

    def forward(self, inputs):
        out, ctx = self.op.forward([self.be.to_host(i) for i in inputs])
        return self.be.upload(out), ctx

    def relevance(self, ctx, R):
        rs = self.op.relevance(ctx, self.be.to_host(R))
        return [None if r is None else self.be.upload(r) for r in rs]


def coverage(backend: str) -> dict:
    """``{op: (rule kinds run by a kernel, variants note)}`` for a backend kernel family
    (``"cpu"``, ``"numba"``, ``"cuda"``); an op missing, a kind not listed or a
    variant outside the note runs the fallback."""
    out = {}
    for op in ops.names():
        entry = _KERNELS.get((backend, op))
        if entry is not None:
            kinds = entry[1] if entry[1] is not None else ops.spec(op).rules
            out[op] = (tuple(k for k in ops.spec(op).rules if k in kinds), entry[2])
    return out
