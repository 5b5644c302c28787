"""How a prepared graph runs: the plan the Explainer drives.

:class:`NodePlan` runs the graph node by node through the prepared node ops of
the backend (``backend.prepare`` per node, see :mod:`fastlrp.backends.dispatch`):
one forward pass keeping each node's context, then one relevance pass per seed.
A backend that runs a whole graph at once (a compiled plan executed in C++,
buffers allocated once per batch size) defines ``compile(graph, nodes, rules)``
returning an object with the same two methods, and the Explainer uses that
instead; nothing in the engine assumes one Python call per node.
"""

from __future__ import annotations

import numpy as np

from ..ops import spec

__all__ = ["NodePlan", "make_plan"]


def make_plan(backend, graph, nodes, rules):
    """``backend.compile(graph, nodes, rules)`` where the backend has it, else a :class:`NodePlan`."""
    compile_graph = getattr(backend, "compile", None)
    if compile_graph is not None:
        return compile_graph(graph, nodes, rules)
    return NodePlan(backend, graph, nodes, rules)


class NodePlan:
    """The node-by-node interpreter.

    ``forward(x) -> (output, ctx)``; ``relevance(ctx, seed, report=None) -> R``
    (``report``: a RelevanceReport to fill with per-node sums). ``x`` and ``seed``
    are batches in the backend's array type; ``ctx`` may be used for several seeds.
    """

    def __init__(self, backend, graph, nodes, rules):
        self.backend, self.graph, self.nodes = backend, graph, list(nodes)
        self.ops = {n.name: backend.prepare(graph, n, rules[n.name]) for n in self.nodes}
        self.readers = {n.name: 0 for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                self.readers[i] += 1
        # The edges relevance travels (all but the inputs a rule silences, e.g. CP-LRP's
        # attention weights) and the nodes it reaches; the others (the scores, softmax, q and
        # k of CP-LRP) keep no forward context and run no relevance pass.
        self.sends = {}
        reached = {graph.output}
        for n in reversed(self.nodes):
            if n.name in reached:
                silent = spec(n.op).silent_inputs(graph, n, rules[n.name])
                self.sends[n.name] = [k not in silent for k in range(len(n.inputs))]
                reached.update(i for i, s in zip(n.inputs, self.sends[n.name]) if s)
        self.silent = {n.name for n in self.nodes if n.name not in reached}

    def _host(self, a):
        to = getattr(self.backend, "to_host", None)
        return a if to is None else to(a)

    def forward(self, x):
        acts, ctxs = {}, {}
        left = dict(self.readers)
        for n in self.nodes:
            ins = [x] if n.op == "input" else [acts[i] for i in n.inputs]
            acts[n.name], ctxs[n.name] = self.ops[n.name].forward(ins)
            if n.name in self.silent:
                ctxs[n.name] = None
            for i in n.inputs:  # free activations as soon as their last reader ran
                left[i] -= 1
                if left[i] == 0 and i != self.graph.output:
                    del acts[i]
        out = acts[self.graph.output]
        if out.shape[0] != x.shape[0]:  # computed from constants alone: one row for the batch
            host = self._host(out)
            out = np.ascontiguousarray(np.broadcast_to(host, (x.shape[0],) + tuple(host.shape[1:])))
            to_device = getattr(self.backend, "to_device", None)
            out = out if to_device is None else to_device(out)
        return out, ctxs

    def relevance(self, ctxs, seed, report=None):
        R = {self.graph.output: seed}
        for n in reversed(self.nodes):
            r = R.pop(n.name, None)
            if r is None:
                if report is not None and n.name in self.silent:  # what it would get and pass on: zeros
                    report.relevance_out[n.name] = report.relevance_in[n.name] = np.zeros(seed.shape[0], seed.dtype)
                continue
            if n.op == "input":
                return r
            ins = self.ops[n.name].relevance(ctxs[n.name], r)
            if report is not None:
                rh = self._host(r)
                report.relevance_out[n.name] = rh.reshape(rh.shape[0], -1).sum(axis=1)
                report.relevance_in[n.name] = sum(
                    ih.reshape(ih.shape[0], -1).sum(axis=1) for ih in map(self._host, ins))
            for name, ri, send in zip(n.inputs, ins, self.sends[n.name]):
                if send:
                    R[name] = ri if name not in R else R[name] + ri
        return None  # the output does not depend on the input
