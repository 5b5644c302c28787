"""Import Keras 3 models into the fastlrp IR.

:func:`from_keras` walks a Keras 3 ``Sequential`` or functional model (or a
``.keras`` / legacy ``.h5`` file) in execution order and emits a
:class:`fastlrp.graph.Graph`.

Layout
------
Keras models are channels-last by default; the engine is channels-first. The
importer tracks, for every Keras tensor, how the engine holds it: a per-sample
axis permutation ``perm`` with ``engine_tensor = keras_tensor.transpose(perm)``.
Convolutions and poolings want channels first, so a channels-last input is held
transposed (``(H, W, C)`` as ``(C, H, W)``) and conv kernels are transposed
once at import. Layers whose meaning depends on the memory order (``Flatten``,
``Reshape``) get a ``permute`` node in front that restores the Keras order, so
the ``Dense`` after a ``Flatten`` sees its features in the order it was trained
with. Elementwise layers, ``Add``, ``Concatenate`` (axis remapped) and Keras
``Permute`` layers keep whatever layout they get; ``Permute`` costs no node.

When the input is held transposed, ``graph.meta["layout"]`` is
``"channels_last"``, ``graph.meta["keras_input_shape"]`` the model's own
per-sample input shape and ``graph.meta["input_perm"]`` the permutation;
:func:`to_engine_layout` and :func:`from_engine_layout` convert inputs and
relevance maps between the two layouts (batch-aware).

BatchNormalization and the output activation
--------------------------------------------
The importer translates a BatchNormalization into a ``batchnorm`` node and a softmax
into an ``activation`` node; the IR passes (:func:`fastlrp.passes.optimize`, run once
at the end) fold a BatchNormalization into the Dense/Conv before it (a Dense/Conv
without activation whose output nothing else reads) or into the input side of the
Dense or unpadded Conv after it, where that is exact; any other BatchNormalization
stays a ``batchnorm`` node (Pass rule) and the import warns. ``graph.meta``
lists the folded ones under ``"folded_batchnorm"``. A final softmax, log_softmax or
sigmoid is stripped with a warning unless ``keep_output_activation=True``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .. import passes
from ..errors import UnsupportedLayerError
from ..graph import Graph, GraphError, Node, same_padding, unique_name

__all__ = [
    "UnsupportedLayerError",
    "from_keras",
    "load_model",
    "to_engine_layout",
    "from_engine_layout",
]


# ----------------------------------------------------------------------------------
# helpers


def _keras():
    try:
        import keras  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without keras
        raise ImportError(
            "fastlrp.from_keras needs Keras 3 (pip install keras h5py); "
            "with no TensorFlow installed, set KERAS_BACKEND=torch (or jax) before importing keras"
        ) from e
    import keras

    major = int(str(keras.__version__).split(".")[0])
    if major < 3:
        raise ImportError(f"fastlrp.from_keras needs Keras 3, found keras {keras.__version__}")
    return keras


def _np(v) -> np.ndarray | None:
    if v is None:
        return None
    keras = _keras()
    v = getattr(v, "value", v)  # a keras.Variable -> its backend tensor
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch backend: avoid numpy's __array__ copy warning
        return np.array(v.detach().cpu().numpy(), dtype=np.float64)
    return np.array(keras.ops.convert_to_numpy(v), dtype=np.float64)


def _desc(layer) -> str:
    return f"'{layer.name}' ({type(layer).__name__})"


def _unsupported(layer, why: str = "") -> UnsupportedLayerError:
    msg = f"Keras layer {_desc(layer)} is not supported by fastlrp.from_keras"
    if why:
        msg += f": {why}"
    return UnsupportedLayerError(msg)


def _ident(rank: int) -> tuple:
    return tuple(range(rank))


def _cf_perm(rank: int) -> tuple:
    """Engine-from-Keras permutation of a channels-last tensor: channels first."""
    return (rank - 1, *range(rank - 1)) if rank >= 2 else _ident(rank)


def _inverse(perm) -> tuple:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _activation_of(fn, layer) -> tuple | None:
    """Map a Keras activation function to ``(kind, attrs)``; ``None`` for linear."""
    keras = _keras()
    acts = keras.activations
    table = [
        ("linear", None),
        ("relu", ("relu", {})),
        ("tanh", ("tanh", {})),
        ("sigmoid", ("sigmoid", {})),
        ("elu", ("elu", {"alpha": 1.0})),
        ("leaky_relu", ("leaky_relu", {"negative_slope": 0.2})),
        ("gelu", ("gelu", {})),
        ("silu", ("silu", {})),
        ("swish", ("silu", {})),
        ("softplus", ("softplus", {})),
        ("relu6", ("hardtanh", {"min_val": 0.0, "max_val": 6.0})),
        ("hard_sigmoid", ("hardsigmoid", {})),
        ("hard_silu", ("hardswish", {})),
        ("hard_swish", ("hardswish", {})),
        ("softmax", ("softmax", {})),
        ("log_softmax", ("log_softmax", {})),
    ]
    if fn is None:
        return None
    for name, out in table:
        ref = getattr(acts, name, None)
        if ref is not None and fn is ref:
            return out
    name = getattr(fn, "__name__", repr(fn))
    raise _unsupported(layer, f"activation '{name}' (supported: {', '.join(n for n, _ in table)})")


#: Keras ops (keras.src.ops.numpy) written as ``x + c`` etc. in a functional model.
_ARITHMETIC_OPS = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Divide": "div", "TrueDivide": "div",
                   "Negative": "neg"}

_IDENTITY_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)


# ----------------------------------------------------------------------------------
# the importer


class _Importer:
    def __init__(self, keep_output_activation: bool, fold_batchnorm: bool = True):
        self.keras = _keras()
        self.keep = keep_output_activation
        self.fold_batchnorm = fold_batchnorm
        self.activation_layers: dict = {}  # node -> Keras class, for activation *layers* (ReLU, ELU, ...)
        self.nodes: list[Node] = []
        self.names: set = set()
        self.tensors: dict = {}  # tensor key -> (engine name, perm)
        self.shapes: dict = {}  # engine name -> per-sample engine shape
        self.seen_ops: dict = {}  # id(layer) -> where it was first used

    # -- bookkeeping ---------------------------------------------------------------
    @staticmethod
    def key(t) -> tuple:
        h = t._keras_history
        return (id(h.operation), h.node_index, h.tensor_index)

    def unique(self, name: str) -> str:
        return unique_name(name, self.names)

    def emit(self, name, op, inputs, attrs=None, params=None, shape=(), source="") -> str:
        name = self.unique(name)
        params = {k: np.asarray(v) for k, v in (params or {}).items() if v is not None}
        node = Node(name, op, list(inputs), dict(attrs or {}), params, tuple(shape), source)
        self.nodes.append(node)
        self.shapes[name] = tuple(shape)
        return name

    def ensure(self, held: tuple, want: tuple, layer) -> str:
        """Engine tensor ``held = (name, perm)`` rearranged to permutation ``want``."""
        name, perm = held
        if tuple(perm) == tuple(want):
            return name
        # engine axis i currently holds keras axis perm[i]; we want keras axis want[j] at j
        pos = {k: i for i, k in enumerate(perm)}
        p = tuple(pos[k] for k in want)
        shape = self.shapes[name]
        return self.emit(
            f"{layer.name}/permute", "permute", [name], {"perm": p}, shape=tuple(shape[i] for i in p),
            source=f"layout change before {_desc(layer)}",
        )

    # -- walking -------------------------------------------------------------------
    def run(self, model) -> Graph:
        keras = self.keras
        if not isinstance(model, keras.Model):
            raise TypeError(f"from_keras expects a keras.Model or a path to a saved model, got {type(model).__name__}")
        fn = self.functional(model)
        if len(fn.inputs) != 1 or len(fn.outputs) != 1:
            raise UnsupportedLayerError(
                f"model '{model.name}' has {len(fn.inputs)} input(s) and {len(fn.outputs)} output(s); "
                "fastlrp.from_keras supports models with exactly one input and one output"
            )
        inp = fn.inputs[0]
        kshape = tuple(inp.shape[1:])
        if any(s is None for s in kshape):
            raise GraphError(
                f"model '{model.name}': the input shape {tuple(inp.shape)} has unknown per-sample dimensions; "
                "build the model with a fixed input shape (keras.Input(shape=...))"
            )
        kshape = tuple(int(s) for s in kshape)
        perm = self.input_perm(fn, kshape)
        eshape = tuple(kshape[p] for p in perm)
        name = self.emit("input", "input", [], {"shape": eshape}, shape=eshape, source=f"{inp.name} (InputLayer)")
        self.tensors[self.key(inp)] = (name, perm)

        out = self.walk(fn, prefix="")
        out_name, out_perm = out
        if out_name == name:  # the model is an identity
            out_name = self.emit("output", "activation", [name], {"kind": "identity"}, shape=self.shapes[name])
        # the engine's output in the model's own layout
        if len(out_perm) > 1 and tuple(out_perm) != _ident(len(out_perm)):
            out_name = self.ensure((out_name, out_perm), _ident(len(out_perm)), _Named("output"))

        layout = "channels_last" if tuple(perm) != _ident(len(perm)) else "channels_first"
        meta = {
            "importer": "keras",
            "framework": f"keras {keras.__version__} ({keras.backend.backend()} backend)",
            "model_name": model.name,
            "layout": layout,
            "keras_input_shape": kshape,
            "input_perm": tuple(perm),
            # activation nodes made from activation layer classes other than Activation
            # (iNNvestigate maps those by their gradient: fastlrp.innvestigate)
            "keras_activation_layers": self.activation_layers,
        }
        graph = Graph(self.nodes, output=out_name, meta=meta)
        try:
            return passes.optimize(graph, keep_output_activation=self.keep, fold_batchnorm=self.fold_batchnorm)
        except GraphError as e:  # a graph the engine cannot explain, e.g. a softmax inside the model
            raise UnsupportedLayerError(f"model '{model.name}': {e}") from e

    def functional(self, model):
        keras = self.keras
        if isinstance(model, keras.Sequential):
            fn = getattr(model, "_functional", None)
            if fn is None:
                raise GraphError(
                    f"Sequential model '{model.name}' is not built: give it a keras.Input(shape=...) "
                    "or call model.build(input_shape) first"
                )
            return fn
        if not hasattr(model, "_nodes_by_depth"):
            raise UnsupportedLayerError(
                f"model '{model.name}' ({type(model).__name__}) is a subclassed model; fastlrp.from_keras needs "
                "a Sequential or functional model (its graph cannot be read from a subclassed model's call())"
            )
        return model

    def input_perm(self, fn, kshape) -> tuple:
        rank = len(kshape)
        if rank < 2:
            return _ident(rank)
        consumers = []
        for depth in fn._nodes_by_depth:
            for n in fn._nodes_by_depth[depth]:
                if any(self.key(t) == self.key(fn.inputs[0]) for t in n.input_tensors):
                    consumers.append(n.operation)
        if any(getattr(op, "data_format", None) == "channels_first" for op in consumers):
            return _ident(rank)
        if consumers and all(type(op).__name__ in ("Flatten", "Reshape", "Permute", "Dense") for op in consumers):
            return _ident(rank)
        return _cf_perm(rank)

    def walk(self, fn, prefix: str):
        keras = self.keras
        for depth in sorted(fn._nodes_by_depth, reverse=True):
            for node in fn._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, keras.layers.InputLayer):
                    continue
                ins = [self.tensors.get(self.key(t)) for t in node.input_tensors]
                if any(i is None for i in ins):  # pragma: no cover - defensive
                    raise GraphError(f"layer {_desc(op)}: an input tensor was not produced before it")
                if id(op) in self.seen_ops:
                    raise UnsupportedLayerError(
                        f"Keras layer {_desc(op)} is used at more than one place in the model (shared layer); "
                        "fastlrp.from_keras does not support shared layers: give each use its own layer"
                    )
                self.seen_ops[id(op)] = True
                if len(node.output_tensors) != 1:
                    raise _unsupported(op, f"it has {len(node.output_tensors)} outputs")
                out_t = node.output_tensors[0]
                kshape = tuple(int(s) for s in out_t.shape[1:])
                if isinstance(op, keras.Model):
                    inner = self.functional(op)
                    if len(inner.inputs) != 1 or len(inner.outputs) != 1 or len(ins) != 1:
                        raise _unsupported(op, "nested models must have one input and one output")
                    self.tensors[self.key(inner.inputs[0])] = ins[0]
                    res = self.walk(inner, prefix=f"{prefix}{op.name}/")
                else:
                    res = self.layer(op, ins, kshape, f"{prefix}{op.name}", node)
                self.tensors[self.key(out_t)] = res
                # the engine shape we hold must match the Keras shape
                name, perm = res
                if tuple(self.shapes[name]) != tuple(kshape[p] for p in perm):  # pragma: no cover - defensive
                    raise GraphError(
                        f"layer {_desc(op)}: internal shape mismatch, Keras {kshape}, engine {self.shapes[name]}"
                    )
        return self.tensors[self.key(fn.outputs[0])]

    # -- one layer -------------------------------------------------------------------
    def layer(self, layer, ins, kshape, name, node=None):
        cls = type(layer).__name__
        src = f"{layer.name} ({cls})"
        rank = len(kshape)

        if cls in _IDENTITY_LAYERS:
            return ins[0]

        if cls == "Dense":
            rank_in = len(ins[0][1])
            x = self.ensure(ins[0], _ident(rank_in), layer)  # Keras' layout: Dense acts on the last axis
            k = _np(layer.kernel)
            b = _np(layer.bias) if layer.use_bias else None
            h = self.emit(name, "dense", [x], {}, {"weight": k.T.copy(), "bias": b},
                          (*self.shapes[x][:-1], k.shape[1]), src)
            return self.with_activation(layer, (h, _ident(rank_in)), name, src)

        if cls in ("Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"):
            return self.conv(layer, ins[0], kshape, name, src, cls)

        if cls in ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"):
            d = int(cls[-2])
            x, cf = self.spatial_in(layer, ins[0], d)
            k = tuple(int(v) for v in layer.pool_size)
            s = tuple(int(v) for v in (layer.strides if layer.strides is not None else k))
            shape = self.shapes[x]
            if layer.padding == "valid":
                pads = ((0, 0),) * d
            elif layer.padding == "same":
                pads = tuple(same_padding(shape[1 + i], k[i], s[i]) for i in range(d))
            else:
                raise _unsupported(layer, f"padding '{layer.padding}'")
            if cls.startswith("Max"):
                attrs = {"dims": d, "kernel": k, "stride": s, "padding": pads, "dilation": (1,) * d, "ceil_mode": False}
                op = "maxpool"
            else:
                attrs = {"dims": d, "kernel": k, "stride": s, "padding": pads, "ceil_mode": False,
                         "count_include_pad": False, "divisor_override": None}
                op = "avgpool"
                if any(a != b for a, b in pads) and self.keras.backend.backend() == "torch":
                    warnings.warn(
                        f"fastlrp.from_keras: {src} uses 'same' padding with uneven borders {pads}; fastlrp "
                        "follows TensorFlow's definition (the padding is left out of the average), while Keras' "
                        "torch backend replicates the edge values there, so outputs at those borders differ "
                        "from this Keras backend's",
                        stacklevel=5,
                    )
            out = self.out_spatial(kshape, cf, d)
            return (self.emit(name, op, [x], attrs, None, out, src), cf)

        if cls in ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D"):
            d = int(cls[-2])
            x, cf = self.spatial_in(layer, ins[0], d)
            shape = self.shapes[x]
            pooled = (shape[0],) + (1,) * d
            if "Average" in cls:
                h = self.emit(name, "adaptive_avgpool", [x], {"dims": d, "output_size": (1,) * d}, None, pooled, src)
            else:
                sp = tuple(shape[1:])
                attrs = {"dims": d, "kernel": sp, "stride": sp, "padding": ((0, 0),) * d,
                         "dilation": (1,) * d, "ceil_mode": False}
                h = self.emit(name, "maxpool", [x], attrs, None, pooled, src)
            if getattr(layer, "keepdims", False):
                return (h, cf)
            return (self.emit(f"{name}/squeeze", "reshape", [h], {"shape": (shape[0],)}, None, (shape[0],), src), (0,))

        if cls in ("Conv1DTranspose", "Conv2DTranspose"):
            return self.conv_transpose(layer, ins[0], kshape, name, src, cls)

        if cls in ("UpSampling1D", "UpSampling2D"):
            d = int(cls[-2])
            x, cf = self.spatial_in(layer, ins[0], d)
            f = (int(layer.size),) if d == 1 else tuple(int(v) for v in layer.size)
            mode = "nearest" if d == 1 else {"nearest": "nearest", "bilinear": "linear"}.get(layer.interpolation)
            if mode is None:
                raise _unsupported(layer, f"interpolation '{layer.interpolation}' (nearest and bilinear are supported)")
            attrs = {"dims": d, "size": tuple(self.shapes[x][1 + i] * f[i] for i in range(d)), "mode": mode,
                     "align_corners": False, "scale": None}
            return (self.emit(name, "upsample", [x], attrs, None, self.out_spatial(kshape, cf, d), src), cf)

        if cls in ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D"):
            return self.pad(layer, ins[0], kshape, name, src, cls)

        if cls == "Flatten":
            x = self.ensure(ins[0], _ident(len(ins[0][1])), layer)
            if len(self.shapes[x]) == 1:
                return (x, (0,))
            n = int(np.prod(self.shapes[x]))
            return (self.emit(name, "reshape", [x], {"shape": (n,)}, None, (n,), src), (0,))

        if cls == "Reshape":
            x = self.ensure(ins[0], _ident(len(ins[0][1])), layer)
            return (self.emit(name, "reshape", [x], {"shape": kshape}, None, kshape, src), _ident(rank))

        if cls == "Permute":
            p = tuple(int(v) - 1 for v in layer.dims)  # keras out axis j = keras in axis p[j]
            pinv = _inverse(p)
            x, q = ins[0]
            return (x, tuple(pinv[k] for k in q))

        if type(layer).__module__.startswith("keras.src.ops") and cls in _ARITHMETIC_OPS:
            return self.arithmetic_op(layer, node, kshape, name, src, _ARITHMETIC_OPS[cls])

        if cls in ("Add", "Multiply", "Subtract"):
            want = ins[0][1]
            xs = [self.ensure(i, want, layer) for i in ins]
            if len(xs) < 2:
                raise _unsupported(layer, f"{cls} of {len(xs)} tensor(s) (needs two or more)")
            if cls == "Subtract":
                xs = [xs[0], self.scaled(xs[1], -1.0, name, layer)]
            if cls == "Multiply":
                h = xs[0]
                for k, x in enumerate(xs[1:]):
                    h = self.emit(name if k == len(xs) - 2 else f"{name}/mul_{k}", "mul", [h, x], {}, None,
                                  tuple(np.broadcast_shapes(self.shapes[h], self.shapes[x])), src)
                return (h, want)
            shape = tuple(np.broadcast_shapes(*[self.shapes[x] for x in xs]))
            return (self.emit(name, "add", xs, {}, None, shape, src), want)

        if cls == "LayerScale" and hasattr(layer, "gamma"):  # ConvNeXt's learned per-channel scale
            x, perm = ins[0]
            c = self.const(layer.gamma, perm, f"{name}/gamma", layer)
            return (self.emit(name, "mul", [x, c], {}, None, self.shapes[x], src), perm)

        if cls == "Rescaling":
            x, perm = ins[0]
            h = self.emit(f"{name}/scale", "mul", [x, self.const(layer.scale, perm, f"{name}/scale_value", layer)],
                          {}, None, self.shapes[x], src)
            h = self.emit(name, "add", [h, self.const(layer.offset, perm, f"{name}/offset_value", layer)], {}, None,
                          self.shapes[x], src)
            return (h, perm)

        if cls == "Normalization":
            x, perm = ins[0]
            mean = _np(layer.mean)
            std = np.maximum(np.sqrt(_np(layer.variance)), self.keras.backend.epsilon())
            scale, shift = (std, mean) if layer.invert else (1.0 / std, -mean / std)
            h = self.emit(f"{name}/scale", "mul", [x, self.const(scale, perm, f"{name}/scale_value", layer)], {},
                          None, self.shapes[x], src)
            return (self.emit(name, "add", [h, self.const(shift, perm, f"{name}/shift_value", layer)], {}, None,
                              self.shapes[x], src), perm)

        if cls == "Concatenate":
            want = ins[0][1]
            xs = [self.ensure(i, want, layer) for i in ins]
            ax = int(layer.axis)
            ax = ax - 1 if ax > 0 else ax + rank  # drop the batch axis
            if not 0 <= ax < rank:
                raise _unsupported(layer, f"concatenation along the batch axis (axis={layer.axis})")
            eax = list(want).index(ax)
            eshape = tuple(kshape[p] for p in want)
            return (self.emit(name, "concat", xs, {"axis": eax}, None, eshape, src), want)

        if cls in ("LayerNormalization", "RMSNormalization"):
            return self.layernorm(layer, ins[0], kshape, name, src)

        if cls == "MultiHeadAttention":
            return self.multihead_attention(layer, ins, kshape, name, src, node)

        if cls == "BatchNormalization":
            return self.batchnorm(layer, ins[0], kshape, name, src)

        if cls == "Activation":
            act = _activation_of(layer.activation, layer)
            if act is None:
                return ins[0]
            return self.act(ins[0], act, name, src, layer)

        if cls == "ReLU":
            mv = None if layer.max_value is None else float(layer.max_value)
            th = float(layer.threshold)
            ns = float(layer.negative_slope)
            if th == 0.0 and mv is None:
                act = ("leaky_relu", {"negative_slope": ns}) if ns != 0.0 else ("relu", {})
            elif th == 0.0 and ns == 0.0:  # ReLU(max_value=6) is ReLU6
                act = ("hardtanh", {"min_val": 0.0, "max_val": mv})
            else:
                act = ("clipped_relu", {"max_value": mv, "threshold": th, "negative_slope": ns})
            return self.activation_layer(ins[0], act, name, src, layer)

        if cls == "LeakyReLU":
            return self.activation_layer(ins[0], ("leaky_relu", {"negative_slope": float(layer.negative_slope)}), name,
                                         src, layer)

        if cls == "ELU":
            return self.activation_layer(ins[0], ("elu", {"alpha": float(layer.alpha)}), name, src, layer)

        if cls == "Softmax":
            return self.activation_layer(ins[0], ("softmax", {}), name, src, layer)

        raise _unsupported(layer)

    def multihead_attention(self, layer, ins, kshape, name, src, node):
        """keras.layers.MultiHeadAttention over the token axis of (tokens, features) inputs:
        the query/key/value projections (EinsumDense) as dense nodes, heads split by
        reshape/permute, ``softmax(q k^T / sqrt(key_dim) (+ causal mask)) v`` as matmul / mul /
        softmax nodes (the lowering of torch's attention), the output projection."""
        args = tuple(getattr(getattr(node, "arguments", None), "args", ()) or ())
        kwargs = dict(getattr(getattr(node, "arguments", None), "kwargs", {}) or {})
        masks = [k for k in ("attention_mask", "query_mask", "value_mask", "key_mask") if kwargs.get(k) is not None]
        if masks:
            raise _unsupported(layer, f"{', '.join(masks)} (only use_causal_mask is supported)")
        if getattr(layer, "_use_gate", False) or getattr(layer, "_sliding_window", None) is not None:
            raise _unsupported(layer, "use_gate / sliding_window attention")
        n_in = 2 + (len(args) >= 3 or kwargs.get("key") is not None)
        if len(ins) != n_in or len(kshape) != 2:
            raise _unsupported(layer, "attention needs query and value (and key) of shape (tokens, features)")
        if tuple(layer._attention_axes) != (1,):
            raise _unsupported(layer, f"attention_axes {layer._attention_axes} (over the token axis only)")
        q_in, v_in = ins[0], ins[1]
        k_in = ins[2] if n_in == 3 else v_in
        H = int(layer._num_heads)
        xs = {r: self.ensure(held, (0, 1), layer) for r, held in (("query", q_in), ("key", k_in), ("value", v_in))}

        def heads(role, dense):  # (T, E) -> dense -> (T, H, d) -> (H, T, d)
            if dense.equation != "abc,cde->abde":
                raise _unsupported(layer, f"{role} projection '{dense.equation}'")
            k = _np(dense.kernel)  # (E, H, d)
            E, d = k.shape[0], k.shape[2]
            b = _np(dense.bias).reshape(-1) if dense.bias is not None else None
            x = xs[role]
            T = self.shapes[x][0]
            h = self.emit(f"{name}/{role}", "dense", [x], {}, {"weight": k.reshape(E, H * d).T.copy(), "bias": b},
                          (T, H * d), src)
            h = self.emit(f"{name}/{role}_heads", "reshape", [h], {"shape": (T, H, d)}, None, (T, H, d), src)
            return self.emit(f"{name}/{role}_perm", "permute", [h], {"perm": (1, 0, 2)}, None, (H, T, d), src)

        q = heads("query", layer._query_dense)
        k = heads("key", layer._key_dense)
        v = heads("value", layer._value_dense)
        Tq, Tk, dv = self.shapes[q][1], self.shapes[k][1], self.shapes[v][2]
        scores = self.emit(f"{name}/scores", "matmul", [q, k], {"transpose_b": True}, None, (H, Tq, Tk), src)
        scale = float(layer._inverse_sqrt_key_dim)
        c = self.emit(f"{name}/scale", "const", [], {}, {"value": np.array(scale)}, (), f"{src} scale {scale:.6g}")
        scores = self.emit(f"{name}/scaled", "mul", [scores, c], {}, None, (H, Tq, Tk), src)
        if kwargs.get("use_causal_mask"):
            mask = np.where(np.tril(np.ones((Tq, Tk), bool)), 0.0, -1e9)
            m = self.emit(f"{name}/mask", "const", [], {}, {"value": mask}, (Tq, Tk), f"{src} causal mask")
            scores = self.emit(f"{name}/masked", "add", [scores, m], {}, None, (H, Tq, Tk), src)
        w = self.emit(f"{name}/softmax", "softmax", [scores], {"axis": -1}, None, (H, Tq, Tk), src)
        o = self.emit(f"{name}/values", "matmul", [w, v], {}, None, (H, Tq, dv), src)
        o = self.emit(f"{name}/merge_perm", "permute", [o], {"perm": (1, 0, 2)}, None, (Tq, H, dv), src)
        o = self.emit(f"{name}/merge", "reshape", [o], {"shape": (Tq, H * dv)}, None, (Tq, H * dv), src)
        out = layer._output_dense
        if out.equation != "abcd,cde->abe":
            raise _unsupported(layer, f"output projection '{out.equation}'")
        ko = _np(out.kernel)  # (H, dv, E')
        bo = _np(out.bias).reshape(-1) if out.bias is not None else None
        h = self.emit(name, "dense", [o], {}, {"weight": ko.reshape(H * dv, -1).T.copy(), "bias": bo},
                      (Tq, ko.shape[2]), src)
        return (h, (0, 1))

    def layernorm(self, layer, held, kshape, name, src):
        """LayerNormalization / RMSNormalization over Keras axes, in the layout the tensor is held in."""
        rms = type(layer).__name__ == "RMSNormalization"
        if getattr(layer, "rms_scaling", False):
            raise _unsupported(layer, "rms_scaling=True (deprecated in Keras: it scales x by 1/std without centring "
                               "it); use keras.layers.RMSNormalization")
        x, perm = held
        rank = len(kshape)
        axes = [int(a) for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis])]
        kaxes = sorted((a % (rank + 1)) - 1 for a in axes)  # per-sample Keras axes
        if any(a < 0 for a in kaxes):
            raise _unsupported(layer, f"normalisation over the batch axis (axis={layer.axis})")
        bshape = [1] * rank
        for a in kaxes:
            bshape[a] = kshape[a]

        def param(v):
            return None if v is None else _np(v).reshape(bshape).transpose(perm)

        if rms:
            params = {"weight": param(layer.scale), "bias": None}
        else:
            params = {"weight": param(layer.gamma if layer.scale else None),
                      "bias": param(layer.beta if layer.center else None)}
        attrs = {"axes": tuple(sorted(perm.index(a) for a in kaxes)), "eps": float(layer.epsilon), "rms": rms}
        return (self.emit(name, "layernorm", [x], attrs, params, self.shapes[x], src), perm)

    def conv_transpose(self, layer, held, kshape, name, src, cls):
        """Conv1DTranspose / Conv2DTranspose: the conv it transposes pads by what TensorFlow's
        'same' / 'valid' output lengths imply (output_padding included)."""
        d = int(cls[4])
        x, cf = self.spatial_in(layer, held, d)
        if int(getattr(layer, "groups", 1)) != 1:
            raise _unsupported(layer, "groups != 1")
        k = _np(layer.kernel)  # (*kernel, out, in)
        w = k.transpose((d + 1, d) + tuple(range(d)))  # (in, out, *kernel): PyTorch's layout
        out = self.out_spatial(kshape, cf, d)
        s = tuple(int(v) for v in layer.strides)
        dil = tuple(int(v) for v in layer.dilation_rate)
        pads = []
        for i in range(d):
            full = (self.shapes[x][1 + i] - 1) * s[i] + dil[i] * (w.shape[2 + i] - 1) + 1
            before = max(full - out[1 + i], 0) // 2 if layer.padding == "same" else 0
            pads.append((before, max(full - out[1 + i] - before, 0)))
        attrs = {"dims": d, "stride": s, "padding": tuple(pads), "dilation": dil, "groups": 1,
                 "output_size": tuple(out[1:])}
        b = _np(layer.bias) if layer.use_bias else None
        h = self.emit(name, "conv_transpose", [x], attrs, {"weight": w, "bias": b}, out, src)
        return self.with_activation(layer, (h, cf), name, src)

    # -- constants and arithmetic -----------------------------------------------------
    def const(self, value, perm, name, layer) -> str:
        """A ``const`` node for a number or array that broadcasts against a Keras tensor held
        in engine layout ``perm`` (right-aligned against the Keras per-sample shape; a leading
        axis of 1 beyond it is the batch axis)."""
        v = np.asarray(value, dtype=np.float64) if isinstance(value, (int, float, list, tuple, np.ndarray)) \
            else _np(value)
        rank = len(perm)
        if v.ndim > rank:
            if v.ndim != rank + 1 or v.shape[0] != 1:
                raise _unsupported(layer, f"constant of shape {v.shape} does not broadcast per sample")
            v = v[0]
        v = v.reshape((1,) * (rank - v.ndim) + v.shape).transpose(perm) if rank else v
        return self.emit(name, "const", [], {}, {"value": v}, v.shape, f"{_desc(layer)} (constant)")

    def scaled(self, x: str, factor: float, name: str, layer) -> str:
        c = self.emit(f"{name}/factor", "const", [], {}, {"value": np.array(factor)}, (), f"{_desc(layer)} (constant)")
        return self.emit(f"{name}/neg", "mul", [x, c], {}, None, self.shapes[x], f"{_desc(layer)}")

    def arithmetic_op(self, op, node, kshape, name, src, kind):
        """``x + c``, ``x - y``, ``c * x``, ``x / c``, ``-x`` written with Keras ops in a
        functional model: tensors and constants as operands."""
        args = list(node.arguments.args) if node is not None else []
        if node is not None and node.arguments.kwargs:
            raise _unsupported(op, f"keyword arguments {sorted(node.arguments.kwargs)}")
        if len(args) != (1 if kind == "neg" else 2):
            raise _unsupported(op, f"{len(args)} operands")
        perm = None
        operands = []
        for a in args:
            held = self.tensors.get(self.key(a)) if hasattr(a, "_keras_history") else None
            operands.append(held)
            if held is not None and perm is None:
                perm = held[1]
        if perm is None:  # pragma: no cover - Keras folds ops on constants itself
            raise _unsupported(op, "no operand is a tensor of the model")
        names, is_const = [], []
        for a, held in zip(args, operands):
            if held is not None:
                names.append(self.ensure(held, perm, op))
                is_const.append(False)
            else:
                names.append(None)
                is_const.append(True)
        if kind == "neg":
            return (self.scaled(names[0], -1.0, name, op), perm)
        if kind == "div":
            if not is_const[1]:
                raise _unsupported(op, "division by a tensor of the model (only division by a constant)")
            args[1] = 1.0 / np.asarray(args[1], dtype=np.float64)
        if kind == "sub" and is_const[1]:
            args[1] = -np.asarray(args[1], dtype=np.float64)
        for i in (0, 1):
            if is_const[i]:
                names[i] = self.const(args[i], perm, f"{name}/const_{i}", op)
        if kind == "sub" and not is_const[1]:
            names[1] = self.scaled(names[1], -1.0, name, op)
        out_shape = tuple(kshape[p] for p in perm)
        return (self.emit(name, "add" if kind in ("add", "sub") else "mul", names, {}, None, out_shape, src), perm)

    # -- layer families ------------------------------------------------------------
    def pad(self, layer, held, kshape, name, src, cls):
        """ZeroPadding / Cropping: one ``pad`` node in the layout the tensor is held in
        (cropping is negative padding)."""
        d = int(cls[-2])
        x, perm = held
        if len(perm) != d + 1:
            raise _unsupported(layer, f"expected an input with {d + 1} axes per sample, got {len(perm)}")
        amounts = layer.padding if cls.startswith("Zero") else layer.cropping
        amounts = [amounts] if d == 1 else list(amounts)  # Keras 3 keeps one (before, after) pair per axis
        sign = 1 if cls.startswith("Zero") else -1
        first_spatial = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else 0
        kpads = [(0, 0)] * (d + 1)  # per Keras per-sample axis
        for i, (b, a) in enumerate(amounts):
            kpads[first_spatial + i] = (sign * int(b), sign * int(a))
        pads = tuple(kpads[k] for k in perm)  # engine axis i holds Keras axis perm[i]
        return (self.emit(name, "pad", [x], {"padding": pads, "value": 0.0}, None,
                          tuple(kshape[k] for k in perm), src), perm)

    def spatial_in(self, layer, held, d):
        """Input of a conv/pool layer in channels-first engine layout, and the perm it implies."""
        fmt = getattr(layer, "data_format", "channels_last")
        rank = d + 1
        if len(held[1]) != rank:
            raise _unsupported(layer, f"expected an input with {rank} axes per sample, got {len(held[1])}")
        want = _cf_perm(rank) if fmt == "channels_last" else _ident(rank)
        return self.ensure(held, want, layer), want

    @staticmethod
    def out_spatial(kshape, perm, d):
        return tuple(kshape[p] for p in perm)

    def conv(self, layer, held, kshape, name, src, cls):
        d = 1 if "1D" in cls else 2
        x, cf = self.spatial_in(layer, held, d)
        shape = self.shapes[x]
        cin = shape[0]
        s = tuple(int(v) for v in layer.strides)
        dil = tuple(int(v) for v in layer.dilation_rate)
        if len(s) == 1 and d == 2:
            s = s * 2
        if len(dil) == 1 and d == 2:
            dil = dil * 2
        b = _np(layer.bias) if layer.use_bias else None

        def kernel_pads(ksz):
            if layer.padding == "valid":
                return ((0, 0),) * d
            if layer.padding == "same":
                return tuple(same_padding(shape[1 + i], ksz[i], s[i], dil[i]) for i in range(d))
            if layer.padding == "causal" and d == 1:
                return ((dil[0] * (ksz[0] - 1), 0),)
            raise _unsupported(layer, f"padding '{layer.padding}'")

        if cls in ("Conv1D", "Conv2D"):
            k = _np(layer.kernel)  # (*kernel, in/groups, out)
            w = np.ascontiguousarray(np.transpose(k, (d + 1, d) + tuple(range(d))))
            groups = int(getattr(layer, "groups", 1))
            attrs = {"dims": d, "stride": s, "padding": kernel_pads(k.shape[:d]), "dilation": dil, "groups": groups}
            out = self.out_spatial(kshape, cf, d)
            h = self.emit(name, "conv", [x], attrs, {"weight": w, "bias": b}, out, src)
            return self.with_activation(layer, (h, cf), name, src)

        # depthwise: kernel (*kernel, C, depth_multiplier) -> (C*dm, 1, *kernel)
        dk = _np(layer.kernel if cls.startswith("Depthwise") else layer.depthwise_kernel)
        dm = dk.shape[-1]
        wd = np.transpose(dk, (d, d + 1) + tuple(range(d))).reshape((cin * dm, 1) + dk.shape[:d])
        attrs = {"dims": d, "stride": s, "padding": kernel_pads(dk.shape[:d]), "dilation": dil, "groups": cin}
        if cls.startswith("Depthwise"):
            out = self.out_spatial(kshape, cf, d)
            h = self.emit(name, "conv", [x], attrs, {"weight": np.ascontiguousarray(wd), "bias": b}, out, src)
            return self.with_activation(layer, (h, cf), name, src)
        # separable: depthwise (no bias) then pointwise 1x1 (with the bias)
        from ..graph import conv_output_length

        sp = tuple(
            conv_output_length(shape[1 + i], dk.shape[i], s[i], attrs["padding"][i], dil[i]) for i in range(d)
        )
        h = self.emit(f"{name}/depthwise", "conv", [x], attrs, {"weight": np.ascontiguousarray(wd)},
                      (cin * dm, *sp), src)
        pk = _np(layer.pointwise_kernel)  # (*1, C*dm, out)
        wp = np.ascontiguousarray(np.transpose(pk, (d + 1, d) + tuple(range(d))))
        pattrs = {"dims": d, "stride": (1,) * d, "padding": ((0, 0),) * d, "dilation": (1,) * d, "groups": 1}
        h = self.emit(f"{name}/pointwise", "conv", [h], pattrs, {"weight": wp, "bias": b},
                      (wp.shape[0], *sp), src)
        return self.with_activation(layer, (h, cf), name, src)

    def with_activation(self, layer, held, name, src):
        act = _activation_of(getattr(layer, "activation", None), layer)
        if act is None:
            return held
        return self.act(held, act, f"{name}/activation", src, layer)

    def activation_layer(self, held, act, name, src, layer):
        """An activation layer class of its own (ReLU, LeakyReLU, ELU, Softmax), recorded in
        ``graph.meta["keras_activation_layers"]``."""
        out = self.act(held, act, name, src, layer)
        self.activation_layers[out[0]] = type(layer).__name__
        return out

    def act(self, held, act, name, src, layer):
        kind, attrs = act
        x, perm = held
        if kind in ("softmax", "log_softmax"):
            ax = getattr(layer, "axis", -1)
            if isinstance(ax, (list, tuple)):
                ax = ax[0] if len(ax) == 1 else None
            if len(perm) != 1 or ax not in (-1, 1):
                raise _unsupported(layer, f"{kind} over axis {ax} of a {len(perm)}-axis tensor (only over 1-D features)")
        return (self.emit(name, "activation", [x], {"kind": kind, **attrs}, None, self.shapes[x], src), perm)

    def batchnorm(self, layer, held, kshape, name, src):
        rank = len(kshape)
        ax = layer.axis
        if isinstance(ax, (list, tuple)):
            if len(ax) != 1:
                raise _unsupported(layer, f"normalisation over several axes {ax}")
            ax = ax[0]
        ax = int(ax)
        ax = ax - 1 if ax > 0 else ax + rank
        x, perm = held
        if list(perm).index(ax) != 0:
            want = (ax,) + tuple(p for p in _ident(rank) if p != ax)
            x = self.ensure(held, want, layer)
            perm = want
        var = _np(layer.moving_variance).astype(np.float64)
        mean = _np(layer.moving_mean).astype(np.float64)
        gamma = _np(layer.gamma).astype(np.float64) if layer.scale else np.ones_like(var)
        beta = _np(layer.beta).astype(np.float64) if layer.center else np.zeros_like(var)
        scale = gamma / np.sqrt(var + float(layer.epsilon))
        shift = beta - mean * scale
        h = self.emit(name, "batchnorm", [x], {}, {"scale": scale, "shift": shift}, self.shapes[x], src)
        return (h, perm)


class _Named:
    def __init__(self, name):
        self.name = name


def load_model(path):
    """Load a ``.keras`` or legacy ``.h5`` Keras model file (not compiled)."""
    keras = _keras()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no Keras model file at '{p}'")
    try:
        return keras.saving.load_model(p, compile=False)
    except Exception as e:  # pragma: no cover - depends on the file
        raise GraphError(f"could not load the Keras model '{p}': {e}") from e


def from_keras(model_or_path, *, keep_output_activation: bool = False, fold_batchnorm: bool = True) -> Graph:
    """Import a Keras 3 model into a :class:`~fastlrp.graph.Graph`.

    Parameters
    ----------
    model_or_path : keras.Model or str or os.PathLike
        A ``Sequential`` or functional Keras 3 model with one input and one
        output and fixed per-sample shapes, or a path to a ``.keras`` or
        legacy ``.h5`` model file (loaded with ``keras.saving.load_model``).
    keep_output_activation : bool
        Keep a final softmax, log_softmax or sigmoid (by default it is
        stripped with a warning, so that relevance explains the logits, as
        :func:`fastlrp.from_torch` does).
    fold_batchnorm : bool
        Fold BatchNormalization layers into the adjacent Dense/Conv where that is exact
        (the default). False keeps every one as a ``batchnorm`` node, a layer of its own
        that a composite can give a rule (iNNvestigate's presets do).

    Returns
    -------
    Graph
        In the engine's channels-first layout. For channels-last models
        ``graph.meta["layout"] == "channels_last"``; convert inputs with
        :func:`to_engine_layout` and relevance back with
        :func:`from_engine_layout`.

    Raises
    ------
    UnsupportedLayerError
        For a layer (or an option of a layer) without an exact translation,
        shared layers, and models with several inputs or outputs; the message
        names the layer and its class.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_model(model_or_path)
    else:
        model = model_or_path
    return _Importer(keep_output_activation, fold_batchnorm).run(model)


# ----------------------------------------------------------------------------------
# layout helpers


def _sample_perm(graph) -> tuple | None:
    meta = getattr(graph, "meta", {}) or {}
    if meta.get("layout") != "channels_last":
        return None
    perm = meta.get("input_perm")
    if perm is None:
        rank = len(graph.input_shape)
        perm = _cf_perm(rank)
    return tuple(int(p) for p in perm)


def _apply_trailing(x, perm):
    """Permute the last ``len(perm)`` axes of ``x`` (NumPy or torch), keeping leading axes."""
    k = len(perm)
    lead = x.ndim - k
    if lead < 0:
        raise GraphError(f"array of shape {tuple(x.shape)} has fewer axes than one sample ({k})")
    full = tuple(range(lead)) + tuple(lead + p for p in perm)
    if hasattr(x, "permute") and not isinstance(x, np.ndarray):  # torch
        return x.permute(*full)
    return np.transpose(x, full)


def to_engine_layout(x, graph):
    """Input in the Keras model's layout -> the engine's layout.

    ``x`` holds one sample (``keras_input_shape``) or any number of leading
    axes before it (a batch: NHWC -> NCHW, NLC -> NCL). Identity for graphs
    whose ``meta["layout"]`` is not ``"channels_last"``. Returns a view
    (``np.transpose`` / ``Tensor.permute``); call ``np.ascontiguousarray`` if
    a backend needs contiguous memory.
    """
    perm = _sample_perm(graph)
    if perm is None:
        return x
    kshape = tuple(graph.meta.get("keras_input_shape", ()))
    if kshape and tuple(x.shape[x.ndim - len(perm):]) != kshape:
        raise GraphError(
            f"input of shape {tuple(x.shape)} does not end with the model's per-sample input shape {kshape}"
        )
    return _apply_trailing(x, perm)


def from_engine_layout(R, graph):
    """Relevance in the engine's layout -> the Keras model's layout.

    ``R`` holds one sample (the graph's ``input_shape``) or any leading axes
    before it (batch, targets): NCHW -> NHWC, NCL -> NLC. Identity for graphs
    whose ``meta["layout"]`` is not ``"channels_last"``.
    """
    perm = _sample_perm(graph)
    if perm is None:
        return R
    eshape = tuple(graph.input_shape)
    if tuple(R.shape[R.ndim - len(perm):]) != eshape:
        raise GraphError(
            f"relevance of shape {tuple(R.shape)} does not end with the engine's per-sample input shape {eshape}"
        )
    return _apply_trailing(R, _inverse(perm))
