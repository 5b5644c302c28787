"""Elementwise ops: activations and BatchNorm that could not be folded.

``activation``  attrs ``kind`` in :data:`ACTIVATIONS`, and ``negative_slope``
                (leaky_relu) or ``alpha`` (elu); ``hardtanh``: ``min_val``,
                ``max_val`` (ReLU6 is ``hardtanh(0, 6)``, ``clamp`` with scalar
                bounds likewise; a bound may be +-inf); ``clipped_relu`` (Keras'
                ReLU): ``max_value`` (None: no cap), ``threshold``,
                ``negative_slope``; ``hardswish`` = ``x relu6(x + 3) / 6``,
                ``hardsigmoid`` = ``relu6(x + 3) / 6``; ``gelu_tanh`` is GELU's tanh
                approximation (``approximate="tanh"``). Dropout and stochastic
                depth at inference are ``kind="identity"``.
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


def _hardsigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def _clipped_relu(x, a):
    """Keras' ReLU: ``min(x, max_value)`` from ``threshold`` on, ``negative_slope (x - threshold)`` below."""
    t = a.get("threshold", 0.0)
    top = a.get("max_value")
    up = x if top is None else np.minimum(x, top)
    return np.where(x >= t, up, a.get("negative_slope", 0.0) * (x - t))


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
    "hardtanh": lambda x, a: np.clip(x, a.get("min_val", -1.0), a.get("max_val", 1.0)),
    "clipped_relu": _clipped_relu,
    "hardswish": lambda x, a: x * _hardsigmoid(x),
    "hardsigmoid": lambda x, a: _hardsigmoid(x),
    "gelu_tanh": lambda x, a: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x))),
}

#: Activation kinds, in a fixed order (the GPU kernels number them in this order).
ACTIVATIONS = tuple(_FUNCTIONS)

#: Activations whose output is >= 0 for every input (whatever their attributes).
NONNEGATIVE_ACTIVATIONS = ("relu", "sigmoid", "softplus", "softmax", "hardsigmoid")


def _nonnegative(attrs) -> bool:
    kind = attrs.get("kind")
    if kind == "hardtanh":
        return attrs.get("min_val", -1.0) >= 0
    if kind == "clipped_relu":
        return attrs.get("negative_slope", 0.0) == 0 and attrs.get("threshold", 0.0) >= 0
    return kind in NONNEGATIVE_ACTIVATIONS


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
        a = node.attrs
        if a.get("kind") not in _FUNCTIONS:
            raise GraphError(f"{node.describe()}: unknown activation '{a.get('kind')}' "
                             f"(known: {', '.join(ACTIVATIONS)})")
        if a["kind"] == "hardtanh" and not float(a.get("min_val", -1.0)) <= float(a.get("max_val", 1.0)):
            raise GraphError(f"{node.describe()}: hardtanh needs min_val <= max_val, got "
                             f"{a.get('min_val')} > {a.get('max_val')}")
        if a["kind"] == "clipped_relu" and a.get("max_value") is not None and \
                float(a["max_value"]) < float(a.get("threshold", 0.0)):
            raise GraphError(f"{node.describe()}: clipped_relu needs max_value >= threshold, got "
                             f"{a['max_value']} < {a.get('threshold')}")
        return in_shapes[0]

    def nonnegative(self, node, inputs_nonneg):
        return _nonnegative(node.attrs)

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
