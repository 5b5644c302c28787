"""Elementwise ops: activations and BatchNorm that could not be folded.

``activation``  attrs ``kind`` in :data:`ACTIVATIONS`, and ``negative_slope``
                (leaky_relu) or ``alpha`` (elu). Dropout at inference is
                ``kind="identity"``.
``batchnorm``   params ``scale``, ``shift`` (per channel, along per-sample axis
                0): ``y = x * scale + shift``.

Both pass relevance through unchanged (Pass), as zennit does for activations.
The functions keep their input's dtype (float64 for the reference, float32 for
the float32 backends' fallback).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .spec import OpSpec, need_inputs, register_op

__all__ = ["ACTIVATIONS", "NONNEGATIVE_ACTIVATIONS", "activation_function"]


def _erf(x):
    try:
        from scipy.special import erf  # noqa: PLC0415
    except ImportError:  # pragma: no cover - numpy-only fallback
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    return erf(x)


def _softmax(x):
    flat = x.reshape(x.shape[0], -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


def _log_softmax(x):
    # the shifted form: finite where a float32 softmax would underflow to 0
    flat = x.reshape(x.shape[0], -1)
    s = flat - flat.max(axis=1, keepdims=True)
    return (s - np.log(np.exp(s).sum(axis=1, keepdims=True))).reshape(x.shape)


_FUNCTIONS = {
    "relu": lambda x, a: np.maximum(x, 0),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * a.get("negative_slope", 0.01)),
    "elu": lambda x, a: np.where(x > 0, x, a.get("alpha", 1.0) * np.expm1(np.minimum(x, 0))),
    "tanh": lambda x, a: np.tanh(x),
    "sigmoid": lambda x, a: 0.5 * (1 + np.tanh(0.5 * x)),
    "gelu": lambda x, a: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "silu": lambda x, a: x * 0.5 * (1 + np.tanh(0.5 * x)),
    "softplus": lambda x, a: np.logaddexp(0, x),
    "identity": lambda x, a: x,
    "softmax": lambda x, a: _softmax(x),
    "log_softmax": lambda x, a: _log_softmax(x),
}

#: Activation kinds, in a fixed order (the GPU kernels number them in this order).
ACTIVATIONS = tuple(_FUNCTIONS)

#: Activations whose output is >= 0 for every input.
NONNEGATIVE_ACTIVATIONS = ("relu", "sigmoid", "softplus", "softmax")


def activation_function(kind: str):
    """``f(x, attrs)`` for an activation kind."""
    return _FUNCTIONS[kind]


class _ElementwiseRef:
    def __init__(self, f):
        self.f = f

    def forward(self, inputs):
        return self.f(inputs[0]), None

    def relevance(self, ctx, R):
        return [R]


class ActivationSpec(OpSpec):
    name = "activation"
    doc = "elementwise activation (" + ", ".join(ACTIVATIONS) + "); Pass"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        if node.attrs.get("kind") not in _FUNCTIONS:
            raise GraphError(f"{node.describe()}: unknown activation '{node.attrs.get('kind')}' "
                             f"(known: {', '.join(ACTIVATIONS)})")
        return in_shapes[0]

    def nonnegative(self, node, inputs_nonneg):
        return node.attrs.get("kind") in NONNEGATIVE_ACTIVATIONS

    def reference(self, graph, node, rule):
        fn, a = _FUNCTIONS[node.attrs["kind"]], node.attrs
        return _ElementwiseRef(lambda x: fn(x, a))


class BatchNormSpec(OpSpec):
    name = "batchnorm"
    doc = "per-channel affine map x * scale + shift that could not be folded; Pass"

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        c = in_shapes[0][0]
        for k in ("scale", "shift"):
            if node.params[k].shape != (c,):
                raise GraphError(f"{node.describe()}: {k} must have shape ({c},), got {node.params[k].shape}")
        return in_shapes[0]

    def reference(self, graph, node, rule):
        extra = (1,) * (len(node.shape) - 1)
        s = np.asarray(node.params["scale"], np.float64).reshape((-1,) + extra)
        t = np.asarray(node.params["shift"], np.float64).reshape((-1,) + extra)
        return _ElementwiseRef(lambda x: x * s + t)


register_op(ActivationSpec())
register_op(BatchNormSpec())
