"""The model IR: a small dataflow graph of layers with NumPy parameters.

A :class:`Graph` is a list of :class:`Node` objects in execution (topological)
order. Every node knows the per-sample shape of its output (no batch axis) and
names the nodes it reads from. Tensors are channels first (``C, L`` or
``C, H, W``) inside the engine; importers convert channels-last models.

Operations (``Node.op``) and their attributes
--------------------------------------------
``input``             the model input; ``shape`` is the per-sample input shape.
``dense``             params ``weight`` (out, in), optional ``bias`` (out,).
                      Input shape ``(in,)``.
``conv``              attrs ``dims`` (1 or 2), ``stride``, ``dilation`` (tuples of
                      length dims), ``padding`` (tuple of ``(before, after)`` pairs,
                      one per spatial dim), ``groups``; params ``weight``
                      (out, in/groups, *kernel), optional ``bias`` (out,).
``maxpool``           attrs ``dims``, ``kernel``, ``stride``, ``padding`` (pairs as
                      for conv; padded positions never win), ``dilation``,
                      ``ceil_mode``.
``avgpool``           attrs ``dims``, ``kernel``, ``stride``, ``padding`` (pairs),
                      ``ceil_mode``, ``count_include_pad``, ``divisor_override``
                      (int or None).
``adaptive_avgpool``  attrs ``dims``, ``output_size`` (tuple); a global average
                      pool is ``output_size = (1,) * dims``.
``reshape``           attrs ``shape``: the per-sample output shape (flatten, view).
``permute``           attrs ``perm``: per-sample axis permutation.
``add``               two or more inputs of one shape, summed (residual add).
``concat``            attrs ``axis``: per-sample axis (0 = channels).
``activation``        attrs ``kind`` in :data:`ACTIVATIONS`, and ``negative_slope``
                      (leaky_relu) or ``alpha`` (elu). Dropout at inference is
                      ``kind="identity"``.
``batchnorm``         a BatchNorm that could not be folded: params ``scale``,
                      ``shift`` (per channel, along per-sample axis 0),
                      ``y = x * scale + shift``.

A graph saves to one ``.npz`` file (JSON structure plus the arrays) and loads
with NumPy alone, no framework installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "OPS",
    "PARAMETRIC_OPS",
    "Graph",
    "GraphError",
    "Node",
    "conv_output_length",
    "pool_output_length",
    "same_padding",
    "GraphBuilder",
]

FORMAT_VERSION = 1

ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "elu",
    "tanh",
    "sigmoid",
    "gelu",
    "silu",
    "softplus",
    "identity",
    "softmax",
    "log_softmax",
)

OPS = (
    "input",
    "dense",
    "conv",
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "reshape",
    "permute",
    "add",
    "concat",
    "activation",
    "batchnorm",
)

_NONNEG_ACTIVATIONS = ("relu", "sigmoid", "softplus", "softmax")

#: Ops with weights: the layers that LRP rules such as Epsilon or ZPlus act on.
PARAMETRIC_OPS = ("dense", "conv")


class GraphError(ValueError):
    """A graph is malformed: names the node and what is wrong."""


@dataclass
class Node:
    """One layer of the graph.

    Parameters
    ----------
    name : str
        Unique name (for PyTorch imports, the module path or the fx node name).
    op : str
        One of :data:`OPS`.
    inputs : list of str
        Names of the nodes this node reads, in order.
    attrs : dict
        JSON-serialisable attributes (tuples are kept as tuples).
    params : dict of str to numpy.ndarray
        Parameters (``weight``, ``bias``, ``scale``, ``shift``).
    shape : tuple of int
        Per-sample output shape; filled in by :meth:`Graph.infer_shapes`.
    source : str
        Where the node came from (for error messages), e.g. ``"features.3 (Conv2d)"``.
    """

    name: str
    op: str
    inputs: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    shape: tuple = ()
    source: str = ""

    def describe(self) -> str:
        src = f" [{self.source}]" if self.source and self.source != self.name else ""
        return f"node '{self.name}' ({self.op}{'/' + self.attrs['kind'] if self.op == 'activation' else ''}){src}"


def _pairs(padding: Sequence) -> tuple:
    return tuple((int(a), int(b)) for a, b in padding)


def conv_output_length(length: int, kernel: int, stride: int, pad: tuple, dilation: int) -> int:
    """Output length of a convolution along one axis (floor mode)."""
    eff = dilation * (kernel - 1) + 1
    return (length + pad[0] + pad[1] - eff) // stride + 1


def pool_output_length(
    length: int, kernel: int, stride: int, pad: tuple, dilation: int, ceil_mode: bool
) -> int:
    """Output length of a pooling window along one axis, with PyTorch's ceil rule.

    In ceil mode, the last window must start inside the input or the left
    padding (it may not start in the right padding), as in PyTorch.
    """
    eff = dilation * (kernel - 1) + 1
    span = length + pad[0] + pad[1] - eff
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= length + pad[0]:
            out -= 1
    else:
        out = span // stride + 1
    return out


class Graph:
    """A dataflow graph of :class:`Node` objects in execution order.

    Parameters
    ----------
    nodes : iterable of Node
        In topological order; the first must be the ``input`` node.
    output : str, optional
        Name of the output node (default: the last node).
    meta : dict, optional
        Free-form JSON-serialisable metadata (importer, framework, layout).
    """

    def __init__(self, nodes: Iterable[Node], output: str | None = None, meta: dict | None = None):
        self.nodes: list[Node] = list(nodes)
        if not self.nodes:
            raise GraphError("a graph needs at least an input node")
        self.output = output if output is not None else self.nodes[-1].name
        self.meta = dict(meta or {})
        self._index = {}
        for n in self.nodes:
            if n.op not in OPS:
                raise GraphError(f"{n.describe()}: unknown op '{n.op}' (known: {', '.join(OPS)})")
            if n.name in self._index:
                raise GraphError(f"duplicate node name '{n.name}'")
            for i in n.inputs:
                if i not in self._index:
                    raise GraphError(
                        f"{n.describe()}: input '{i}' is not defined before it (nodes must be in execution order)"
                    )
            self._index[n.name] = n
        if self.nodes[0].op != "input" or sum(n.op == "input" for n in self.nodes) != 1:
            raise GraphError("a graph has exactly one 'input' node, and it comes first")
        if self.output not in self._index:
            raise GraphError(f"output node '{self.output}' is not in the graph")
        self.infer_shapes()

    # -- access ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.nodes[0].shape)

    @property
    def output_shape(self) -> tuple:
        return tuple(self[self.output].shape)

    def consumers(self) -> dict:
        """Map node name -> list of names of nodes that read it."""
        out = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return out

    def known_nonnegative(self, name: str) -> bool:
        """Whether node ``name``'s output is >= 0 by construction: a ReLU (or sigmoid,
        softplus, softmax), possibly seen through pools, reshapes, permutes, and adds or
        concats of such outputs. Kernels skip the negative half of the sign split then."""
        memo = self.__dict__.setdefault("_nonneg_memo", {})
        if name not in memo:
            n = self._index[name]
            if n.op == "activation":
                memo[name] = n.attrs.get("kind") in _NONNEG_ACTIVATIONS
            elif n.op in ("maxpool", "avgpool", "adaptive_avgpool", "reshape", "permute", "add", "concat"):
                memo[name] = all(self.known_nonnegative(i) for i in n.inputs)
            else:
                memo[name] = False
        return memo[name]

    def parametric(self) -> list:
        """The dense/conv nodes, in execution order."""
        return [n for n in self.nodes if n.op in PARAMETRIC_OPS]

    def __repr__(self):
        lines = [f"Graph({len(self.nodes)} nodes, input {self.input_shape} -> output {self.output_shape})"]
        for n in self.nodes:
            lines.append(f"  {n.name:<30} {n.op:<17} {str(tuple(n.shape)):<18} <- {', '.join(n.inputs)}")
        return "\n".join(lines)

    def summary(self) -> str:
        return repr(self)

    # -- shapes ---------------------------------------------------------------------
    def infer_shapes(self) -> None:
        """Check every node's inputs and attributes and fill in ``Node.shape``."""
        self.__dict__.pop("_nonneg_memo", None)
        for n in self.nodes:
            try:
                n.shape = tuple(int(s) for s in self._infer(n))
            except GraphError:
                raise
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise GraphError(f"{n.describe()}: invalid attributes or parameters: {e}") from e
            if any(s <= 0 for s in n.shape):
                raise GraphError(f"{n.describe()}: output shape {n.shape} has an empty axis")

    def _infer(self, n: Node) -> tuple:
        ins = [self._index[i].shape for i in n.inputs]
        a = n.attrs

        def need(k):
            if len(ins) != k:
                raise GraphError(f"{n.describe()}: expects {k} input(s), got {len(ins)}")

        if n.op == "input":
            need(0)
            return tuple(a.get("shape", n.shape))
        if n.op == "dense":
            need(1)
            w = n.params["weight"]
            if w.ndim != 2:
                raise GraphError(f"{n.describe()}: weight must be 2-D (out, in), got shape {w.shape}")
            if len(ins[0]) != 1 or ins[0][0] != w.shape[1]:
                raise GraphError(
                    f"{n.describe()}: input of shape {ins[0]} does not match weight (out={w.shape[0]}, in={w.shape[1]})"
                )
            self._check_bias(n, w.shape[0])
            return (w.shape[0],)
        if n.op == "conv":
            need(1)
            d = int(a["dims"])
            w = n.params["weight"]
            g = int(a.get("groups", 1))
            if w.ndim != d + 2:
                raise GraphError(f"{n.describe()}: weight must be {d + 2}-D, got shape {w.shape}")
            if len(ins[0]) != d + 1:
                raise GraphError(f"{n.describe()}: input must have {d + 1} axes (C, spatial...), got {ins[0]}")
            if ins[0][0] != w.shape[1] * g or w.shape[0] % g:
                raise GraphError(
                    f"{n.describe()}: {ins[0][0]} input channels do not match weight {w.shape} with groups={g}"
                )
            self._check_bias(n, w.shape[0])
            pads = _pairs(a["padding"])
            sp = [
                conv_output_length(ins[0][1 + i], w.shape[2 + i], a["stride"][i], pads[i], a["dilation"][i])
                for i in range(d)
            ]
            return (w.shape[0], *sp)
        if n.op in ("maxpool", "avgpool"):
            need(1)
            d = int(a["dims"])
            if len(ins[0]) != d + 1:
                raise GraphError(f"{n.describe()}: input must have {d + 1} axes, got {ins[0]}")
            pads = _pairs(a["padding"])
            dil = a.get("dilation", (1,) * d)
            for i in range(d):
                if pads[i][0] > a["kernel"][i] // 2 or pads[i][1] > a["kernel"][i] // 2:
                    raise GraphError(f"{n.describe()}: padding {pads[i]} exceeds half the kernel {a['kernel'][i]}")
            sp = [
                pool_output_length(
                    ins[0][1 + i], a["kernel"][i], a["stride"][i], pads[i], dil[i], bool(a.get("ceil_mode", False))
                )
                for i in range(d)
            ]
            for i in range(d):
                # a dilated window can fall entirely into the padding: its max would be -inf
                for o in range(sp[i]):
                    taps = o * a["stride"][i] - pads[i][0] + dil[i] * np.arange(a["kernel"][i])
                    if not np.any((taps >= 0) & (taps < ins[0][1 + i])):
                        raise GraphError(
                            f"{n.describe()}: output position {o} along spatial axis {i} has a window "
                            f"entirely in the padding (input {ins[0][1 + i]}, kernel {a['kernel'][i]}, "
                            f"dilation {dil[i]}, padding {pads[i]})"
                        )
            return (ins[0][0], *sp)
        if n.op == "adaptive_avgpool":
            need(1)
            d = int(a["dims"])
            if len(ins[0]) != d + 1:
                raise GraphError(f"{n.describe()}: input must have {d + 1} axes, got {ins[0]}")
            return (ins[0][0], *a["output_size"])
        if n.op == "reshape":
            need(1)
            shape = tuple(a["shape"])
            if -1 in shape:
                known = math.prod(s for s in shape if s != -1)
                shape = tuple(math.prod(ins[0]) // known if s == -1 else s for s in shape)
                a["shape"] = shape
            if math.prod(shape) != math.prod(ins[0]):
                raise GraphError(f"{n.describe()}: cannot reshape {ins[0]} to {shape}")
            return shape
        if n.op == "permute":
            need(1)
            perm = tuple(a["perm"])
            if sorted(perm) != list(range(len(ins[0]))):
                raise GraphError(f"{n.describe()}: permutation {perm} does not fit shape {ins[0]}")
            return tuple(ins[0][p] for p in perm)
        if n.op == "add":
            if len(ins) < 2:
                raise GraphError(f"{n.describe()}: needs at least two inputs")
            if any(s != ins[0] for s in ins):
                raise GraphError(f"{n.describe()}: summands have different shapes {ins} (broadcasting is not supported)")
            return ins[0]
        if n.op == "concat":
            if len(ins) < 1:
                raise GraphError(f"{n.describe()}: needs inputs")
            ax = int(a["axis"])
            rank = len(ins[0])
            if ax < 0:
                ax += rank
                a["axis"] = ax
            for s in ins:
                if len(s) != rank or any(s[i] != ins[0][i] for i in range(rank) if i != ax):
                    raise GraphError(f"{n.describe()}: cannot concatenate shapes {ins} along axis {ax}")
            return tuple(sum(s[ax] for s in ins) if i == ax else ins[0][i] for i in range(rank))
        if n.op == "activation":
            need(1)
            if a.get("kind") not in ACTIVATIONS:
                raise GraphError(f"{n.describe()}: unknown activation '{a.get('kind')}'")
            return ins[0]
        if n.op == "batchnorm":
            need(1)
            for k in ("scale", "shift"):
                if n.params[k].shape != (ins[0][0],):
                    raise GraphError(f"{n.describe()}: {k} must have shape ({ins[0][0]},), got {n.params[k].shape}")
            return ins[0]
        raise GraphError(f"{n.describe()}: unknown op")

    @staticmethod
    def _check_bias(n: Node, out: int) -> None:
        b = n.params.get("bias")
        if b is not None and b.shape != (out,):
            raise GraphError(f"{n.describe()}: bias must have shape ({out},), got {b.shape}")

    # -- persistence ----------------------------------------------------------------
    def save(self, path) -> None:
        """Save to one ``.npz`` file (structure as JSON, parameters as arrays)."""
        arrays = {}
        nodes = []
        for i, n in enumerate(self.nodes):
            keys = {}
            for k, v in n.params.items():
                if v is None:
                    continue
                key = f"p{i}_{k}"
                arrays[key] = np.asarray(v)
                keys[k] = key
            nodes.append(
                {
                    "name": n.name,
                    "op": n.op,
                    "inputs": list(n.inputs),
                    "attrs": _to_json(n.attrs),
                    "params": keys,
                    "shape": list(n.shape),
                    "source": n.source,
                }
            )
        header = {"format": "fastlrp.graph", "version": FORMAT_VERSION, "output": self.output, "meta": self.meta, "nodes": nodes}
        arrays["__graph__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "Graph":
        """Load a graph written by :meth:`save`; needs NumPy only."""
        with np.load(path, allow_pickle=False) as z:
            if "__graph__" not in z.files:
                raise GraphError(f"{path}: not a fastlrp graph file (no '__graph__' entry)")
            header = json.loads(bytes(z["__graph__"]).decode("utf-8"))
            if header.get("format") != "fastlrp.graph":
                raise GraphError(f"{path}: not a fastlrp graph file")
            if header.get("version", 0) > FORMAT_VERSION:
                raise GraphError(f"{path}: graph format version {header['version']} is newer than this fastlrp supports")
            nodes = [
                Node(
                    name=d["name"],
                    op=d["op"],
                    inputs=list(d["inputs"]),
                    attrs=_from_json(d["attrs"]),
                    params={k: np.array(z[key]) for k, key in d["params"].items()},
                    shape=tuple(d["shape"]),
                    source=d.get("source", ""),
                )
                for d in header["nodes"]
            ]
        return cls(nodes, output=header["output"], meta=header.get("meta"))

    def fingerprint(self) -> str:
        """A hash of the structure and parameters (to tie stored results to a model)."""
        import hashlib

        h = hashlib.sha256()
        for n in self.nodes:
            h.update(json.dumps([n.name, n.op, n.inputs, _to_json(n.attrs)], sort_keys=True).encode())
            for k in sorted(n.params):
                v = n.params[k]
                if v is not None:
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
        return h.hexdigest()


def _to_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(v) for v in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def unique_name(name: str, used: set) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if taken; the result is added to ``used``."""
    base, k = name, 1
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name


def same_padding(length: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple:
    """TensorFlow/Keras "same" padding along one axis: ``(before, after)``.

    The output has ``ceil(length / stride)`` positions; an odd total goes to the end.
    """
    eff = dilation * (kernel - 1) + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + eff - length, 0)
    return (total // 2, total - total // 2)


class GraphBuilder:
    """Build a :class:`Graph` node by node (used by importers and tests).

    Examples
    --------
    >>> b = GraphBuilder((3, 8, 8))
    >>> h = b.conv(b.input, w, bias, stride=1, padding=1)
    >>> h = b.activation(h, "relu")
    >>> g = b.build()
    """

    def __init__(self, input_shape: Sequence[int], input_name: str = "input"):
        self.nodes: list[Node] = [Node(input_name, "input", [], {"shape": tuple(int(s) for s in input_shape)}, {}, tuple(input_shape))]
        self.input = input_name
        self._count: dict = {}

    def _name(self, op: str, name: str | None) -> str:
        if name is not None:
            return name
        k = self._count.get(op, 0)
        self._count[op] = k + 1
        return f"{op}_{k}"

    def add_node(self, op: str, inputs, attrs=None, params=None, name=None, source="") -> str:
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        params = {k: np.asarray(v) for k, v in (params or {}).items() if v is not None}
        self.nodes.append(Node(self._name(op, name), op, inputs, dict(attrs or {}), params, (), source))
        return self.nodes[-1].name

    def dense(self, x, weight, bias=None, name=None, source=""):
        return self.add_node("dense", x, {}, {"weight": weight, "bias": bias}, name, source)

    def conv(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, name=None, source=""):
        """``padding``: int, per-axis ints, per-axis (before, after) pairs, or "same"/"valid"."""
        weight = np.asarray(weight)
        d = weight.ndim - 2
        stride, dilation = _tup(stride, d), _tup(dilation, d)
        if isinstance(padding, str):
            if padding == "valid":
                pads = ((0, 0),) * d
            elif padding == "same":
                shape = self._shape_of(x)
                pads = tuple(same_padding(shape[1 + i], weight.shape[2 + i], stride[i], dilation[i]) for i in range(d))
            else:
                raise GraphError(f"conv '{name}': unknown padding '{padding}'")
        else:
            pads = _pad_pairs(padding, d)
        attrs = {"dims": d, "stride": stride, "padding": pads, "dilation": dilation, "groups": int(groups)}
        return self.add_node("conv", x, attrs, {"weight": weight, "bias": bias}, name, source)

    def maxpool(self, x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, dims=2, name=None, source=""):
        kernel = _tup(kernel, dims)
        attrs = {"dims": dims, "kernel": kernel, "stride": _tup(stride if stride is not None else kernel, dims),
                 "padding": _pad_pairs(padding, dims), "dilation": _tup(dilation, dims), "ceil_mode": bool(ceil_mode)}
        return self.add_node("maxpool", x, attrs, None, name, source)

    def avgpool(self, x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None, dims=2, name=None, source=""):
        kernel = _tup(kernel, dims)
        attrs = {"dims": dims, "kernel": kernel, "stride": _tup(stride if stride is not None else kernel, dims),
                 "padding": _pad_pairs(padding, dims), "ceil_mode": bool(ceil_mode),
                 "count_include_pad": bool(count_include_pad),
                 "divisor_override": None if divisor_override is None else int(divisor_override)}
        return self.add_node("avgpool", x, attrs, None, name, source)

    def adaptive_avgpool(self, x, output_size, dims=2, name=None, source=""):
        return self.add_node("adaptive_avgpool", x, {"dims": dims, "output_size": _tup(output_size, dims)}, None, name, source)

    def reshape(self, x, shape, name=None, source=""):
        return self.add_node("reshape", x, {"shape": tuple(int(s) for s in shape)}, None, name, source)

    def flatten(self, x, name=None, source=""):
        return self.reshape(x, (-1,), name, source)

    def permute(self, x, perm, name=None, source=""):
        return self.add_node("permute", x, {"perm": tuple(int(p) for p in perm)}, None, name, source)

    def add(self, *xs, name=None, source=""):
        return self.add_node("add", list(xs), {}, None, name, source)

    def concat(self, xs, axis=0, name=None, source=""):
        return self.add_node("concat", list(xs), {"axis": int(axis)}, None, name, source)

    def activation(self, x, kind, name=None, source="", **kw):
        return self.add_node("activation", x, {"kind": kind, **kw}, None, name, source)

    def batchnorm(self, x, scale, shift, name=None, source=""):
        return self.add_node("batchnorm", x, {}, {"scale": scale, "shift": shift}, name, source)

    def _shape_of(self, name: str) -> tuple:
        # shapes are only known once built; build a throwaway graph of the prefix
        return Graph(list(self._copy_nodes()), output=name)[name].shape

    def _copy_nodes(self):
        for n in self.nodes:
            yield Node(n.name, n.op, list(n.inputs), dict(n.attrs), dict(n.params), n.shape, n.source)

    def build(self, output: str | None = None, meta: dict | None = None) -> Graph:
        return Graph(self.nodes, output=output, meta=meta)


def _tup(v, d: int) -> tuple:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * d
    v = tuple(int(x) for x in v)
    if len(v) != d:
        raise GraphError(f"expected {d} values, got {v}")
    return v


def _pad_pairs(padding, d: int) -> tuple:
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * d
    out = []
    for p in padding:
        if isinstance(p, (int, np.integer)):
            out.append((int(p), int(p)))
        else:
            a, b = p
            out.append((int(a), int(b)))
    if len(out) != d:
        raise GraphError(f"expected padding for {d} axes, got {padding}")
    return tuple(out)
