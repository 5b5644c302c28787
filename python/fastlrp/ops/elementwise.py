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

Both pass relevance through unchanged (Pass, the default), as zennit does for
activations. iNNvestigate's conventions are opt-in rules: Gradient on an
activation (``R_in = R * f'(x)``, softmax: the vector-Jacobian product), and the
weight rules on a batchnorm node, which is then the layer with the diagonal
weight ``scale`` and bias ``shift`` (:class:`~fastlrp.ops.linear.LinearReference`).
The functions keep their input's dtype (float64 for the reference, float32 for
the float32 backends' fallback).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .linear import LinearReference
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


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _clipped_relu_grad(x, a):
    t, top = a.get("threshold", 0.0), a.get("max_value")
    inside = (x > t) if top is None else (x > t) & (x < top)
    return np.where(x >= t, inside * 1.0, a.get("negative_slope", 0.0))


def _per_sample_sum(v):
    return v.reshape(v.shape[0], -1).sum(axis=1).reshape((-1,) + (1,) * (v.ndim - 1))


def _gelu_tanh_grad(x):
    c = math.sqrt(2.0 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


#: ``vjp(x, R, attrs)``: ``R`` times the derivative at ``x`` (the Gradient rule), the
#: derivative's one-sided value at kinks as TensorFlow's and PyTorch's gradients take it.
_VJP = {
    "relu": lambda x, R, a: R * (x > 0),
    "leaky_relu": lambda x, R, a: R * np.where(x > 0, 1.0, a.get("negative_slope", 0.01)),
    "elu": lambda x, R, a: R * np.where(x > 0, 1.0, a.get("alpha", 1.0) * np.exp(np.minimum(x, 0))),
    "tanh": lambda x, R, a: R * (1 - np.tanh(x) ** 2),
    "sigmoid": lambda x, R, a: R * _sigmoid(x) * (1 - _sigmoid(x)),
    "gelu": lambda x, R, a: R * (0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),
    "gelu_tanh": lambda x, R, a: R * _gelu_tanh_grad(x),
    "silu": lambda x, R, a: R * _sigmoid(x) * (1 + x * (1 - _sigmoid(x))),
    "softplus": lambda x, R, a: R * _sigmoid(x),
    "identity": lambda x, R, a: R,
    "softmax": lambda x, R, a: _softmax(x) * (R - _per_sample_sum(R * _softmax(x))),
    "log_softmax": lambda x, R, a: R - _softmax(x) * _per_sample_sum(R),
    "hardtanh": lambda x, R, a: R * ((x > a.get("min_val", -1.0)) & (x < a.get("max_val", 1.0))),
    "clipped_relu": lambda x, R, a: R * _clipped_relu_grad(x, a),
    "hardswish": lambda x, R, a: R * np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (2 * x + 3) / 6)),
    "hardsigmoid": lambda x, R, a: R * ((x > -3) & (x < 3)) / 6,
}


class _ElementwiseRef:
    def __init__(self, f, vjp=None):
        self.f, self.vjp = f, vjp

    def forward(self, inputs):
        return self.f(inputs[0]), (inputs[0] if self.vjp else None)

    def relevance(self, ctx, R):
        return [R if self.vjp is None else self.vjp(ctx, R).astype(R.dtype, copy=False)]


class ActivationSpec(OpSpec):
    name = "activation"
    rules = ("pass", "gradient")
    doc = "elementwise activation (" + ", ".join(ACTIVATIONS) + "); Pass (default) or Gradient"

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
        kind, a = node.attrs["kind"], node.attrs
        fn = _FUNCTIONS[kind]
        if rule.kind != "gradient":
            return _ElementwiseRef(lambda x: fn(x, a))
        vjp = _VJP[kind]
        return _ElementwiseRef(lambda x: fn(x, a), lambda x, R: vjp(x, R, a))


class BatchNormSpec(OpSpec):
    name = "batchnorm"
    rules = ("pass", "epsilon", "zplus", "alphabeta", "alphabetax", "flat", "wsquare")
    doc = ("per-channel affine map x * scale + shift that could not be folded; Pass (default), or a weight rule "
           "on it as a diagonal layer (iNNvestigate)")

    def infer(self, node, in_shapes):
        need_inputs(node, in_shapes, 1)
        c = in_shapes[0][0]
        for k in ("scale", "shift"):
            if node.params[k].shape != (c,):
                raise GraphError(f"{node.describe()}: {k} must have shape ({c},), got {node.params[k].shape}")
        return in_shapes[0]

    def reference(self, graph, node, rule):
        if rule.kind != "pass":
            return LinearReference(graph, node, rule)
        extra = (1,) * (len(node.shape) - 1)
        s = np.asarray(node.params["scale"], np.float64).reshape((-1,) + extra)
        t = np.asarray(node.params["shift"], np.float64).reshape((-1,) + extra)
        return _ElementwiseRef(lambda x: x * s + t)


register_op(ActivationSpec())
register_op(BatchNormSpec())
