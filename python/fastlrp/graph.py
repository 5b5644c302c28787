"""The model IR: a small dataflow graph of layers with NumPy parameters.

A :class:`Graph` is a list of :class:`Node` objects in execution (topological)
order. Every node knows the per-sample shape of its output (no batch axis) and
names the nodes it reads from. Tensors are channels first (``C, L`` or
``C, H, W``) inside the engine; importers convert channels-last models.

Operations (``Node.op``), their attributes, shape rules, LRP rules and float64
reference implementations are declared once per op in the registry,
:mod:`fastlrp.ops` (``fastlrp.ops.names()`` lists them; each family module's
docstring lists its ops' attributes).

A graph saves to one ``.npz`` file (JSON structure plus the arrays) and loads
with NumPy alone, no framework installed.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from . import ops
from .errors import GraphError, GraphFileError
from .ops.elementwise import ACTIVATIONS
from .ops.linear import conv_output_length, same_padding
from .ops.pool import pool_output_length

__all__ = [
    "ACTIVATIONS",
    "OPS",
    "PARAMETRIC_OPS",
    "Graph",
    "GraphError",
    "GraphFileError",
    "Node",
    "conv_output_length",
    "pool_output_length",
    "same_padding",
    "GraphBuilder",
]

FORMAT_VERSION = 1

#: The ops of the built-in registry (``fastlrp.ops.names()`` also lists ops added later).
OPS = ops.names()

#: Ops with weights: the layers that LRP rules such as Epsilon or ZPlus act on.
PARAMETRIC_OPS = tuple(n for n in OPS if ops.spec(n).parametric)


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
            if n.op not in ops.names():
                raise GraphError(f"{n.describe()}: unknown op '{n.op}' (known: {', '.join(ops.names())})")
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

    def live_nodes(self) -> list:
        """The nodes the output depends on, in execution order."""
        needed = {self.output}
        for n in reversed(self.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        return [n for n in self.nodes if n.name in needed]

    def known_nonnegative(self, name: str) -> bool:
        """Whether node ``name``'s output is >= 0 by construction: a ReLU (or sigmoid,
        softplus, softmax), possibly seen through pools, reshapes, permutes, and adds or
        concats of such outputs. Kernels skip the negative half of the sign split then."""
        memo = self.__dict__.setdefault("_nonneg_memo", {})
        if name not in memo:
            n = self._index[name]
            memo[name] = ops.spec(n.op).nonnegative(n, [self.known_nonnegative(i) for i in n.inputs])
        return memo[name]

    def parametric(self) -> list:
        """The dense/conv nodes, in execution order."""
        return [n for n in self.nodes if n.op in PARAMETRIC_OPS]

    def check_finite(self, nodes=None) -> None:
        """Raise :class:`GraphError` naming each node and parameter (of ``nodes``,
        default all) that holds NaN or Inf values: such a model has no relevance."""
        bad = []
        for n in self.nodes if nodes is None else nodes:
            for k, v in n.params.items():
                if v is None or not np.issubdtype(np.asarray(v).dtype, np.inexact):
                    continue
                count = int(np.count_nonzero(~np.isfinite(v)))
                if count:
                    bad.append(f"{n.describe()}: parameter '{k}' has {count} NaN/Inf value(s) of {np.size(v)}")
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise GraphError("the model's parameters are not finite: " + "; ".join(bad[:5]) + more)

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
            except (KeyError, TypeError, ValueError, IndexError, ArithmeticError) as e:
                raise GraphError(f"{n.describe()}: invalid attributes or parameters: {e}") from e
            if any(s <= 0 for s in n.shape):
                raise GraphError(f"{n.describe()}: output shape {n.shape} has an empty axis")

    def _infer(self, n: Node) -> tuple:
        return ops.spec(n.op).infer(n, [self._index[i].shape for i in n.inputs])

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
        """Load a graph written by :meth:`save`; needs NumPy only.

        Every problem with the file (missing, not a graph file, truncated or damaged,
        a malformed header, a node that does not check, a newer format) raises
        :class:`GraphFileError` naming the file."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                is_zip = zipfile.is_zipfile(f)
        except OSError as e:
            raise GraphFileError(f"{path}: cannot read the graph file: {e.strerror or e}") from e
        if not is_zip:
            raise GraphFileError(f"{path}: not a fastlrp graph file (graph files are .npz archives written by "
                                 "Graph.save or `fastlrp explain --save-graph`; this one is not a zip archive or is "
                                 "truncated)")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "__graph__" not in z.files:
                    raise GraphFileError(f"{path}: not a fastlrp graph file (no '__graph__' entry)")
                header = _read_header(path, z["__graph__"])
                nodes = [_read_node(path, i, d, z) for i, d in enumerate(header["nodes"])]
        except GraphFileError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            raise GraphFileError(f"{path}: the graph file is damaged or truncated ({type(e).__name__}: {e})") from e
        try:
            return cls(nodes, output=header["output"], meta=header.get("meta"))
        except GraphError as e:
            raise GraphFileError(f"{path}: {e}") from e

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


def _read_header(path: str, raw: np.ndarray) -> dict:
    """The JSON header of a graph file, its structure checked."""
    try:
        header = json.loads(bytes(np.asarray(raw, dtype=np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise GraphFileError(f"{path}: the graph header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != "fastlrp.graph":
        raise GraphFileError(f"{path}: not a fastlrp graph file (the header does not say format 'fastlrp.graph')")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GraphFileError(f"{path}: the graph header's version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise GraphFileError(f"{path}: graph format version {version} is newer than this fastlrp reads "
                             f"(version {FORMAT_VERSION}); upgrade fastlrp to load it")
    if not isinstance(header.get("nodes"), list) or not header["nodes"]:
        raise GraphFileError(f"{path}: the graph header has no list of nodes")
    if not isinstance(header.get("output"), str):
        raise GraphFileError(f"{path}: the graph header does not name its output node")
    if not isinstance(header.get("meta", {}), dict):
        raise GraphFileError(f"{path}: the graph header's meta must be a mapping")
    return header


_NODE_FIELDS = {"name": str, "op": str, "inputs": list, "attrs": dict, "params": dict}


def _read_node(path: str, i: int, d: Any, z) -> Node:
    """Node ``i`` of a graph file's header, its fields and parameter arrays checked."""
    if not isinstance(d, dict):
        raise GraphFileError(f"{path}: node {i} of the header is not a mapping")
    for key, typ in _NODE_FIELDS.items():
        if not isinstance(d.get(key), typ):
            raise GraphFileError(f"{path}: node {i} ({d.get('name', '?')!r}): field '{key}' must be a "
                                 f"{typ.__name__}, got {type(d.get(key)).__name__}")
    if not all(isinstance(v, str) for v in d["inputs"]) or not all(isinstance(v, str) for v in d["params"].values()):
        raise GraphFileError(f"{path}: node {i} ({d['name']!r}): inputs and parameter keys must be strings")
    params = {}
    for k, key in d["params"].items():
        if key not in z.files:
            raise GraphFileError(f"{path}: node {i} ({d['name']!r}): parameter '{k}' (array '{key}') is missing")
        arr = np.array(z[key])
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise GraphFileError(f"{path}: node {i} ({d['name']!r}): parameter '{k}' has dtype {arr.dtype}")
        params[k] = arr
    return Node(name=d["name"], op=d["op"], inputs=list(d["inputs"]), attrs=_from_json(d["attrs"]), params=params,
                shape=(), source=str(d.get("source", "")))


def unique_name(name: str, used: set) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if taken; the result is added to ``used``."""
    base, k = name, 1
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name


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
