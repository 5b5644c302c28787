"""Graph passes on the IR, run once after every importer.

The importers (torch.fx, torch.export / TorchScript, Keras) only translate a framework's
graph into IR nodes: a BatchNorm becomes a ``batchnorm`` node with per-channel ``scale``
and ``shift``, a softmax an ``activation`` node. :func:`optimize` then rewrites the graph
with the passes below. Each pass takes a :class:`~fastlrp.graph.Graph` and returns a new
one (the argument is never modified; unchanged parameter arrays are shared), and works on
the IR alone, whatever framework the graph came from.

What every pass guarantees
--------------------------
- The model's output is the same function of its input (up to float64 rounding where a
  pass multiplies parameters together, see :func:`fold_batchnorms`).
- Nodes that remain keep their names, so composites that address layers by name still
  find them; a dense/conv layer that absorbs a BatchNorm keeps its own name. When the
  output node is removed, the output moves to the node that computes the same tensor.
- Only what is exact is rewritten; anything else is left as it is.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from .graph import PARAMETRIC_OPS, Graph, GraphError, Node

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "optimize",
    "strip_output_activation",
    "prune_dead_nodes",
    "simplify",
    "fold_constants",
    "constants_to_batchnorm",
    "fold_batchnorms",
    "slice_early",
]

#: Activations that are stripped from the output unless ``keep_output_activation=True``.
OUTPUT_ACTIVATIONS = ("softmax", "log_softmax", "sigmoid")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def optimize(graph: Graph, keep_output_activation: bool = False, fold_batchnorm: bool = True) -> Graph:
    """All passes, in order: strip the output activation (unless ``keep_output_activation``),
    prune dead nodes, check that a softmax comes only at the output, simplify routing
    (identities, chains of reshapes and permutes), fold constants, turn per-channel
    constant factors and offsets into BatchNorm nodes, fold BatchNorms (unless
    ``fold_batchnorm`` is False: then they stay nodes of their own), move slices of
    tokens above the token-wise nodes that only they read.

    Raises
    ------
    GraphError
        If a softmax / log_softmax is left anywhere but at the output (LRP has no rule
        for it there).
    """
    if not keep_output_activation:
        graph = strip_output_activation(graph)
    graph = prune_dead_nodes(graph)
    for n in graph:
        if n.op == "activation" and n.attrs.get("kind") in ("softmax", "log_softmax") and n.name != graph.output:
            raise GraphError(f"unsupported {n.attrs['kind']} at {_where(n)}: a softmax is only "
                             "supported at the output")
    graph = prune_dead_nodes(constants_to_batchnorm(fold_constants(simplify(graph))))
    return slice_early(fold_batchnorms(graph) if fold_batchnorm else graph)


# --------------------------------------------------------------------------------------------
# output activation and dead nodes


def strip_output_activation(graph: Graph) -> Graph:
    """Remove a final softmax / log_softmax / sigmoid, with a warning, so that relevance
    explains the logits. The output moves to the activation's input; nodes only the
    activation read are pruned. Other graphs are returned unchanged."""
    last = graph[graph.output]
    if last.op != "activation" or last.attrs.get("kind") not in OUTPUT_ACTIVATIONS:
        return graph
    _warn(f"the output {last.attrs['kind']} {_where(last)} is stripped: fastlrp explains the "
          "logits (pass keep_output_activation=True to keep it)")
    return prune_dead_nodes(Graph(_copy_nodes(graph), output=last.inputs[0], meta=graph.meta))


def prune_dead_nodes(graph: Graph) -> Graph:
    """Remove the nodes the output does not depend on (the input node always stays)."""
    needed = {n.name for n in graph.live_nodes()}
    if all(n.name in needed or n.op == "input" for n in graph):
        return graph
    nodes = [n for n in _copy_nodes(graph) if n.name in needed or n.op == "input"]
    return Graph(nodes, output=graph.output, meta=graph.meta)


# --------------------------------------------------------------------------------------------
# constants


def fold_constants(graph: Graph) -> Graph:
    """Replace every node whose inputs are all ``const`` nodes by one ``const`` node of the
    same name holding its value (computed once, in float64, by the op's reference), e.g.
    a position embedding built from parameters, or ``2 * c``."""
    from . import ops
    from .rules import Pass

    if not any(n.inputs and all(graph[i].op == "const" for i in n.inputs) for n in graph):
        return graph
    w = _Rewrite(graph)
    for n in list(w.nodes):
        if not n.inputs or not all(w.by_name[i].op == "const" for i in n.inputs):
            continue
        sp, g = ops.spec(n.op), w.graph()
        rule = Pass() if "pass" in sp.rules else sp.default_rule(g, n, 1e-6)
        ref = sp.reference(g, n, rule)
        ins = [np.asarray(w.by_name[i].params["value"], np.float64)[None] for i in n.inputs]
        value = np.asarray(ref.forward(ins)[0])[0]
        n.op, n.inputs, n.attrs, n.params = "const", [], {}, {"value": value}
        n.source = f"{n.source or n.name} (constant)"
    return prune_dead_nodes(w.graph())


def _per_channel(value: np.ndarray, x_shape: tuple):
    """A constant that broadcasts against ``x_shape`` along axis 0 only: its values per
    channel (length ``x_shape[0]``), else None."""
    if not x_shape or value.ndim > len(x_shape):
        return None
    v = value.reshape((1,) * (len(x_shape) - value.ndim) + value.shape)
    if any(s != 1 for s in v.shape[1:]) or v.shape[0] not in (1, x_shape[0]):
        return None
    return np.broadcast_to(v.reshape(-1), (x_shape[0],)).astype(np.float64)


def constants_to_batchnorm(graph: Graph) -> Graph:
    """A ``mul`` or ``add`` of a tensor and a constant that is one number per channel (a
    scalar, a ``(C, 1, 1)`` array, ...) becomes a ``batchnorm`` node of the same name
    (``scale``, ``shift``), so that :func:`fold_batchnorms` can fold it into a neighbouring
    dense/conv layer where that is exact (Keras Rescaling, ``x * 0.5``, layer scale after a
    convolution, ``x - mean``). The tensor operand must have the output's shape."""
    w = None
    for n in graph:
        if n.op not in ("mul", "add") or len(n.inputs) != 2:
            continue
        kinds = [graph[i].op == "const" for i in n.inputs]
        if kinds.count(True) != 1:
            continue
        c, x = (n.inputs[0], n.inputs[1]) if kinds[0] else (n.inputs[1], n.inputs[0])
        if tuple(graph[x].shape) != tuple(n.shape):
            continue
        v = _per_channel(np.asarray(graph[c].params["value"], np.float64), tuple(n.shape))
        if v is None:
            continue
        if w is None:
            w = _Rewrite(graph)
        m = w.by_name[n.name]
        scale, shift = (v, np.zeros_like(v)) if n.op == "mul" else (np.ones_like(v), v)
        m.op, m.inputs, m.params = "batchnorm", [x], {"scale": scale, "shift": shift}
        m.attrs = {"from_constant": True}  # not a BatchNorm layer: kept quietly where it cannot fold
    return graph if w is None else prune_dead_nodes(w.graph())


# --------------------------------------------------------------------------------------------
# routing clean-ups


def simplify(graph: Graph) -> Graph:
    """Exact clean-ups of nodes that only move values:

    - an ``identity`` activation, a one-input ``concat``, a ``reshape`` to its input's
      shape and a ``permute`` by the identity are removed (their readers read the input);
    - a ``reshape`` of a ``reshape`` reads the first one's input; a ``permute`` of a
      ``permute`` becomes one permute of the first one's input (removed if it is then
      the identity); the inner node is removed when nothing else reads it.

    Such nodes carry no parameters and pass relevance through unchanged, so outputs and
    relevance are bitwise the same. A no-op that is the output and reads the input node
    stays (the graph of an identity model keeps its one node).
    """
    w = _Rewrite(graph)
    changed = False
    for n in list(w.nodes):
        if n.op in ("reshape", "permute") and w.by_name[n.inputs[0]].op == n.op:
            inner = w.by_name[n.inputs[0]]
            if n.op == "permute":
                n.attrs["perm"] = tuple(inner.attrs["perm"][p] for p in n.attrs["perm"])
            n.inputs = list(inner.inputs)
            changed = True
        src = w.by_name[n.inputs[0]] if n.inputs else None
        noop = (
            (n.op == "activation" and n.attrs.get("kind") == "identity")
            or (n.op == "concat" and len(n.inputs) == 1)
            or (n.op == "reshape" and tuple(n.shape) == tuple(src.shape))
            or (n.op == "permute" and tuple(n.attrs["perm"]) == tuple(range(len(n.attrs["perm"]))))
        )
        if noop and not (n.name == w.output and src.op == "input"):
            w.bypass(n, src.name)
            changed = True
    return prune_dead_nodes(w.graph()) if changed else graph


# --------------------------------------------------------------------------------------------
# slices first


def _slice_commutes(n: Node, axis: int, graph_nodes: dict) -> bool:
    """Whether ``slice(n(inputs)) == n(slice(inputs))`` for a slice of per-sample ``axis``:
    ``n`` works on each position of that axis alone (a dense layer on another axis, a
    LayerNorm over others, an elementwise activation, a sum of same-shape inputs)."""
    rank = len(n.shape)
    if n.op == "dense":
        return axis < rank - 1
    if n.op == "layernorm":
        return axis not in {int(a) % rank for a in n.attrs["axes"]}
    if n.op == "activation":
        return n.attrs.get("kind") not in ("softmax", "log_softmax")
    if n.op == "add":
        return all(tuple(graph_nodes[i].shape) == tuple(n.shape) for i in n.inputs)
    return False


def slice_early(graph: Graph) -> Graph:
    """Move a slice of a per-sample axis above the nodes that only it reads and that work
    on each position of that axis alone (dense, LayerNorm over other axes, elementwise
    activations, same-shape adds): a ViT's class-token readout ``encoder.ln(x)[:, 0]``
    becomes ``encoder.ln(x[:, 0])``, and the last block's MLP, LayerNorms and output
    projection run on one token instead of all (ViT-B/16: 1/13 of the dense products).

    Positions the slice drops get no relevance under any rule, so the output and the
    input relevance are the same (bit for bit: each position is computed alone); the
    moved-over nodes keep their names and get the slice's shape along that axis. A new
    slice is named after the node it reads (``<node>.sliced``); two equal slices of one
    node become one, so a residual read by both branches moves on past it.
    """
    w = _Rewrite(graph)
    changed, moved = False, True
    while moved:
        moved = False
        seen = {}
        for n in list(w.nodes):  # equal slices of one node: one
            if n.op != "slice":
                continue
            key = (n.inputs[0], n.attrs["axis"], n.attrs["start"], n.attrs["stop"], n.attrs["step"])
            if key in seen and n.name != w.output:
                w.bypass(n, seen[key])
                moved = True
            else:
                seen.setdefault(key, n.name)
        for s in list(w.nodes):
            if s.op != "slice":
                continue
            src = w.by_name[s.inputs[0]]
            if (src.name == w.output or len(w.consumers(src.name)) != 1
                    or not _slice_commutes(src, int(s.attrs["axis"]), w.by_name)):
                continue
            at = w.nodes.index(src)
            new = []
            for i in src.inputs:
                name, k = f"{i}.sliced", 1
                while name in w.by_name:
                    name, k = f"{i}.sliced{k}", k + 1
                node = Node(name, "slice", [i], dict(s.attrs), {}, (), s.source)
                w.nodes.insert(at, node)
                w.by_name[name] = node
                at += 1
                new.append(name)
            src.inputs = new
            w.bypass(s, src.name)
            moved = changed = True
            break
    return prune_dead_nodes(w.graph()) if changed else graph


# --------------------------------------------------------------------------------------------
# BatchNorm folding


def fold_batchnorms(graph: Graph) -> Graph:
    """Fold ``batchnorm`` nodes (``y = x * scale + shift`` per channel) where that is exact.

    In this order (the float64 arithmetic is that of the importers before these passes,
    so imported graphs are bitwise unchanged):

    1. **After a layer**: a BatchNorm reading a dense/conv whose output nothing else reads
       (and which is not the output) is folded into it: ``W' = W * s`` per output channel,
       ``b' = b * s + t`` (``t`` without a bias). The layer keeps its name.
    2. **BatchNorm after BatchNorm**: a BatchNorm reading another BatchNorm that nothing
       else reads is merged into that one: ``s = s1 * s2``, ``t = t1 * s2 + t2`` (exact up
       to one float64 rounding); the first keeps its name.
    3. **Before a layer**: a BatchNorm whose output only a dense layer, or a conv without
       padding, reads (and which is not the output) is folded into that layer's input
       side: ``W' = W * s`` per input channel, ``b' = b + sum(W * t)``. With zero padding
       this is not exact (the shift would have to vanish at the borders), so a BatchNorm
       in front of a padded conv (as in DenseNet) is kept.

    Any BatchNorm left is kept as a ``batchnorm`` node (LRP passes relevance through it)
    and a warning names it. ``graph.meta["folded_batchnorm"]`` lists the sources of the
    folded BatchNorms, ``graph.meta["unfolded_batchnorm"]`` those kept (when there are any).

    Folding changes what the LRP rules see: the rule of the layer acts on its folded
    weights, as with zennit's BatchNorm canonizer; the model's output is unchanged.
    """
    w = _Rewrite(graph)
    origins = {n.name: [_label(n)] for n in w.nodes if n.op == "batchnorm"}
    folded = list(w.meta.get("folded_batchnorm", []))
    for step in (_fold_after, _merge_batchnorms, _fold_before):
        for bn in [n for n in w.nodes if n.op == "batchnorm"]:
            into = step(w, bn)
            if into is None:
                continue
            if step is _merge_batchnorms:
                origins[into] += origins.pop(bn.name)
            else:
                folded += origins.pop(bn.name)
    # a kept BatchNorm layer is worth a warning; a kept constant factor / offset is not
    kept = [n for n in w.nodes if n.op == "batchnorm" and not n.attrs.get("from_constant")]
    for bn in kept:
        _warn(f"BatchNorm {_where(bn)} could not be folded into a neighbouring dense/conv layer "
              f"({_why_not_folded(w, bn)}); it is kept as an explicit batchnorm node (LRP passes relevance "
              "through it unchanged)")
    w.meta["folded_batchnorm"] = folded
    if kept:
        w.meta["unfolded_batchnorm"] = list(w.meta.get("unfolded_batchnorm", [])) + [
            s for bn in kept for s in origins[bn.name]]
    return w.graph()


def _fold_after(w: "_Rewrite", bn: Node):
    """Step 1 of :func:`fold_batchnorms`; returns the name of the layer folded into, or None."""
    prev = w.by_name[bn.inputs[0]]
    if prev.op not in PARAMETRIC_OPS or len(w.consumers(prev.name)) != 1 or prev.name == w.output:
        return None
    s, t = bn.params["scale"], bn.params["shift"]
    wt = prev.params["weight"]
    prev.params["weight"] = wt * s.reshape((-1,) + (1,) * (wt.ndim - 1))
    b = prev.params.get("bias")
    prev.params["bias"] = (b * s if b is not None else 0.0) + t
    prev.source = f"{_label(prev)} + {_label(bn)} folded"
    w.bypass(bn, prev.name)
    return prev.name


def _merge_batchnorms(w: "_Rewrite", bn: Node):
    """Step 2 of :func:`fold_batchnorms`: merge ``bn`` into the BatchNorm it reads."""
    prev = w.by_name[bn.inputs[0]]
    if prev.op != "batchnorm" or len(w.consumers(prev.name)) != 1 or prev.name == w.output:
        return None
    s, t = bn.params["scale"], bn.params["shift"]
    prev.params["scale"] = prev.params["scale"] * s
    prev.params["shift"] = prev.params["shift"] * s + t
    prev.source = f"{_label(prev)} + {_label(bn)}"
    if not bn.attrs.get("from_constant"):
        prev.attrs.pop("from_constant", None)
    w.bypass(bn, prev.name)
    return prev.name


def _fold_before(w: "_Rewrite", bn: Node):
    """Step 3 of :func:`fold_batchnorms`: fold ``bn`` into the input side of its one reader."""
    cons = w.consumers(bn.name)
    if bn.name == w.output or len(cons) != 1:
        return None
    nxt = cons[0]
    s, t = bn.params["scale"], bn.params["shift"]
    if nxt.op == "dense":
        wt = nxt.params["weight"]
        b = nxt.params.get("bias")
        b = np.zeros(wt.shape[0]) if b is None else b
        nb = b + wt @ t
        nw = wt * s[None, :]
    elif nxt.op == "conv" and all(tuple(p) == (0, 0) for p in nxt.attrs["padding"]):
        wt = nxt.params["weight"]
        b = nxt.params.get("bias")
        b = np.zeros(wt.shape[0]) if b is None else b
        g = int(nxt.attrs.get("groups", 1))
        cout, cin_g = wt.shape[0], wt.shape[1]
        grp = np.arange(cout) // (cout // g)
        s_o = s.reshape(g, cin_g)[grp]  # (out, in/groups): the scale of each weight's input channel
        t_o = t.reshape(g, cin_g)[grp]
        extra = (1,) * (wt.ndim - 2)
        nw = wt * s_o.reshape(s_o.shape + extra)
        nb = b + (wt * t_o.reshape(t_o.shape + extra)).reshape(cout, -1).sum(axis=1)
    else:
        return None
    nxt.params["weight"] = nw
    nxt.params["bias"] = nb
    nxt.source = f"{_label(bn)} folded + {_label(nxt)}"
    w.bypass(bn, bn.inputs[0])
    return nxt.name


def _why_not_folded(w: "_Rewrite", bn: Node) -> str:
    prev = w.by_name[bn.inputs[0]]
    if prev.op in PARAMETRIC_OPS:
        after = f"{prev.describe()} is also read by other nodes"
    else:
        after = f"it reads {prev.describe()}, not a dense/conv layer"
    cons = w.consumers(bn.name)
    if bn.name == w.output:
        before = "it is the output"
    elif len(cons) != 1:
        before = f"{len(cons)} nodes read it"
    elif cons[0].op == "conv":
        before = f"it feeds {cons[0].describe()}, which zero-pads its input"
    else:
        before = f"it feeds {cons[0].describe()}"
    return f"{after}, and {before}"


# --------------------------------------------------------------------------------------------
# helpers


def _label(n: Node) -> str:
    """How a node is named in the sources of folded layers: its source, else its name."""
    return n.source or n.name


def _where(n: Node) -> str:
    """A node in messages: its name, and its source where that says more."""
    return f"'{n.name}'" + (f" ({n.source})" if n.source and n.source != n.name else "")


def _copy_nodes(graph: Graph) -> list:
    """Copies of the nodes (own inputs, attrs and params dicts; the arrays are shared)."""
    return [Node(n.name, n.op, list(n.inputs), dict(n.attrs), dict(n.params), tuple(n.shape), n.source)
            for n in graph.nodes]


class _Rewrite:
    """A mutable copy of a graph for one pass: nodes, output and meta."""

    def __init__(self, graph: Graph):
        self.nodes = _copy_nodes(graph)
        self.by_name = {n.name: n for n in self.nodes}
        self.output = graph.output
        self.meta = dict(graph.meta)

    def consumers(self, name: str) -> list:
        return [n for n in self.nodes if name in n.inputs]

    def bypass(self, node: Node, by: str) -> None:
        """Remove ``node``; whatever read it (the output included) reads ``by`` instead."""
        for n in self.nodes:
            n.inputs = [by if i == node.name else i for i in n.inputs]
        if self.output == node.name:
            self.output = by
        self.nodes.remove(node)
        del self.by_name[node.name]

    def graph(self) -> Graph:
        return Graph(self.nodes, output=self.output, meta=self.meta)


def _warn(message: str) -> None:
    """Warn, pointing at the first caller outside the fastlrp package (the user's import call)."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)
