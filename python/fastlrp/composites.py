"""Composites: which rule each node of a graph gets.

A composite maps every node of a :class:`~fastlrp.graph.Graph` to a rule. The
named composites reproduce zennit's (``epsilon_plus``, ``epsilon_plus_flat``,
``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``,
``epsilon_gamma_box``, ``excitation_backprop``) with one documented
difference: "first layer" is the first dense/conv node in **execution order**
(zennit takes the first in module registration order, which differs when a
model registers modules in another order than it calls them).

Layer-type keys used in maps
----------------------------
``"dense"``, ``"conv"`` (``"conv1d"``, ``"conv2d"`` for one dimensionality),
``"linear"`` (dense or conv, like zennit's ``Linear`` type), ``"avgpool"``
(average and adaptive average pooling), ``"maxpool"``, ``"add"``,
``"concat"``, ``"activation"``, ``"batchnorm"``, ``"reshape"``, ``"permute"``,
``"pad"``: every op's name, plus the wider keys its registry entry declares
(``fastlrp.ops.spec(op).type_keys``).

Lookup order for a node: by name, then first/last position, then the layer map,
then the base composite (if any), then the structural defaults (Pass for
activations, Norm for average pooling and adds, arg-max routing for max
pooling). A dense/conv node that nothing maps is an error.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from . import ops
from .graph import PARAMETRIC_OPS, Graph, Node
from .ops.attention import attention_weights_operand
from .rules import AlphaBeta, Epsilon, Flat, Gamma, GateEpsilon, Rule, RuleError, ZBox, ZPlus

__all__ = [
    "Composite",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "ExcitationBackprop",
    "AttnLRP",
    "CPLRP",
    "COMPOSITES",
    "get_composite",
    "register_composite",
    "node_type_keys",
]

def node_type_keys(node: Node) -> tuple:
    """The layer-type keys a node answers to, most specific first (its op's registry entry)."""
    return ops.spec(node.op).type_keys(node)


class Composite:
    """Map graph nodes to rules.

    Parameters
    ----------
    layer_map : mapping or sequence of (key, Rule)
        Layer-type key (see module doc) to rule; earlier entries win.
    first, last : Rule, optional
        Rule for the first / last dense-or-conv node in execution order.
    first_types, last_types : sequence of str
        Which layer-type keys count for ``first`` / ``last`` (default ``("linear",)``:
        dense or conv; zennit's EpsilonGammaBox uses ``("conv",)``).
    names : mapping of str to Rule
        Rules for nodes by name (exact names, or regular expressions when a key
        starts with ``re:``).
    base : Composite, optional
        Composite to ask for nodes this one does not map.
    stabilizer : float
        Stabilizer of the default Norm rule for average pooling and adds.
    name : str
        Display name.
    """

    def __init__(
        self,
        layer_map: Mapping | Sequence = (),
        first: Rule | None = None,
        last: Rule | None = None,
        names: Mapping | None = None,
        base: "Composite | None" = None,
        first_types: Sequence[str] = ("linear",),
        last_types: Sequence[str] = ("linear",),
        stabilizer: float = 1e-6,
        name: str = "custom",
    ):
        items = list(layer_map.items()) if isinstance(layer_map, Mapping) else list(layer_map)
        for key, rule in items:
            if not isinstance(rule, Rule):
                raise RuleError(f"composite '{name}': layer map entry '{key}' is not a rule: {rule!r}")
        for key, rule in (names or {}).items():
            if not isinstance(rule, Rule):
                raise RuleError(f"composite '{name}': rule for node '{key}' is not a rule: {rule!r}")
        self.layer_map = items
        self.first = first
        self.last = last
        self.names = dict(names or {})
        self.base = base
        self.first_types = tuple(first_types)
        self.last_types = tuple(last_types)
        self.stabilizer = stabilizer
        self.name = name

    def __repr__(self):
        return f"<Composite {self.name}>"

    # -- resolution ------------------------------------------------------------------
    def _positional(self, graph: Graph) -> dict:
        out = {}
        par = [n for n in graph.nodes if n.op in PARAMETRIC_OPS]
        if self.last is not None:
            cand = [n for n in par if set(node_type_keys(n)) & set(self.last_types)]
            if cand:
                out[cand[-1].name] = self.last
        if self.first is not None:
            cand = [n for n in par if set(node_type_keys(n)) & set(self.first_types)]
            if cand:
                out[cand[0].name] = self.first
        return out

    def _lookup(self, graph: Graph, node: Node, positional: dict) -> Rule | None:
        for key, rule in self.names.items():
            if key == node.name or (key.startswith("re:") and re.fullmatch(key[3:], node.name)):
                return rule
        if node.name in positional:
            return positional[node.name]
        keys = node_type_keys(node)
        for key, rule in self.layer_map:
            if key in keys:
                return rule
        if self.base is not None:
            return self.base._lookup(graph, node, self.base._positional(graph))
        return None

    def resolve(self, graph: Graph) -> dict:
        """Return ``{node name: rule}`` for every node, checking each rule fits its node."""
        positional = self._positional(graph)
        rules = {}
        for node in graph.nodes:
            rule = self._lookup(graph, node, positional)
            if rule is None:
                rule = self._default(graph, node)
            if rule is None:
                raise RuleError(
                    f"composite '{self.name}' has no rule for {node.describe()}; "
                    f"map its type ({', '.join(node_type_keys(node))}) or its name"
                )
            sp = ops.spec(node.op)
            if rule.kind not in sp.rules:
                raise RuleError(
                    f"composite '{self.name}': rule {rule} cannot be applied to {node.describe()} "
                    f"(allowed: {', '.join(sp.rules)})"
                )
            sp.check_rule(graph, node, rule)
            rules[node.name] = rule
        for key in self.names:
            if not key.startswith("re:") and key not in rules:
                raise RuleError(f"composite '{self.name}': no node named '{key}' in the graph")
        return rules

    def _default(self, graph: Graph, node: Node) -> Rule | None:
        return ops.spec(node.op).default_rule(graph, node, self.stabilizer)


class EpsilonPlus(Composite):
    """Dense: Epsilon; conv: ZPlus (zennit's ``EpsilonPlus``)."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("conv", ZPlus(stabilizer, zero_bias)), ("dense", Epsilon(epsilon, zero_bias))],
            stabilizer=stabilizer, name=kw.pop("name", "epsilon_plus"), **kw,
        )


class EpsilonPlusFlat(Composite):
    """EpsilonPlus with Flat for the first dense-or-conv layer (zennit's ``EpsilonPlusFlat``)."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("conv", ZPlus(stabilizer, zero_bias)), ("dense", Epsilon(epsilon, zero_bias))],
            first=Flat(stabilizer), stabilizer=stabilizer, name=kw.pop("name", "epsilon_plus_flat"), **kw,
        )


class EpsilonAlpha2Beta1(Composite):
    """Dense: Epsilon; conv: AlphaBeta(2, 1) (zennit's ``EpsilonAlpha2Beta1``)."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("conv", AlphaBeta(2.0, 1.0, stabilizer, zero_bias)), ("dense", Epsilon(epsilon, zero_bias))],
            stabilizer=stabilizer, name=kw.pop("name", "epsilon_alpha2_beta1"), **kw,
        )


class EpsilonAlpha2Beta1Flat(Composite):
    """EpsilonAlpha2Beta1 with Flat for the first dense-or-conv layer."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("conv", AlphaBeta(2.0, 1.0, stabilizer, zero_bias)), ("dense", Epsilon(epsilon, zero_bias))],
            first=Flat(stabilizer), stabilizer=stabilizer, name=kw.pop("name", "epsilon_alpha2_beta1_flat"), **kw,
        )


class EpsilonGammaBox(Composite):
    """Dense: Epsilon; conv: Gamma(0.25); first **conv**: ZBox(low, high)
    (zennit's ``EpsilonGammaBox``: an MLP gets no ZBox layer)."""

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("conv", Gamma(gamma, stabilizer, zero_bias)), ("dense", Epsilon(epsilon, zero_bias))],
            first=ZBox(low, high, stabilizer), first_types=kw.pop("first_types", ("conv",)),
            stabilizer=stabilizer, name=kw.pop("name", "epsilon_gamma_box"), **kw,
        )


class ExcitationBackprop(Composite):
    """ZPlus on every dense and conv layer (zennit's ``ExcitationBackprop``)."""

    def __init__(self, stabilizer=1e-6, zero_bias=False, **kw):
        super().__init__(
            [("linear", ZPlus(stabilizer, zero_bias))],
            stabilizer=stabilizer, name=kw.pop("name", "excitation_backprop"), **kw,
        )


class AttnLRP(Composite):
    """AttnLRP (Achtibat et al., ICML 2024) for transformers: LayerNorm / RMSNorm with
    the standard deviation held constant (Epsilon), softmax by AttnLRP's rule
    (:class:`~fastlrp.rules.Taylor`), the attention products ``q k^T`` and ``A v``
    by the uniform epsilon rule (:class:`~fastlrp.rules.UniformEpsilon`), GELU / SiLU
    and the other activations by the identity rule (Pass), residual adds by Norm.

    Dense and conv layers get ``Epsilon(epsilon)``, or ``Gamma(gamma)`` when ``gamma``
    is given (LXT's ViT example uses Gamma). ``epsilon`` is also the stabilizer of
    every other rule here: ``AttnLRP(epsilon=0)`` is LRP-0 throughout, the rule LXT's
    Gradient x Input computes on layers without zennit rules. ``layer_map`` entries
    (e.g. ``{"conv": Gamma(1.0)}``) come before these; ``first``, ``last``, ``names``
    as in :class:`Composite`.
    """

    def __init__(self, epsilon=1e-6, gamma=None, zero_bias=False, layer_map=(), **kw):
        linear = Epsilon(epsilon, zero_bias) if gamma is None else Gamma(gamma, epsilon, zero_bias)
        items = list(layer_map.items()) if isinstance(layer_map, Mapping) else list(layer_map)
        super().__init__(items + [("linear", linear), ("layernorm", Epsilon(epsilon, zero_bias))],
                         stabilizer=epsilon, name=kw.pop("name", "attnlrp"), **kw)


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022) inside attention, AttnLRP outside (LXT's
    ``vit_torch.cp_LRP``): a product with attention weights (a softmax output,
    through reshapes and permutes) holds them constant, so relevance flows through
    the values only (:class:`~fastlrp.rules.GateEpsilon`); the softmax and ``q k^T``
    then receive none. The rest, and the arguments, as :class:`AttnLRP`."""

    def __init__(self, epsilon=1e-6, gamma=None, zero_bias=False, layer_map=(), **kw):
        super().__init__(epsilon, gamma, zero_bias, layer_map, name=kw.pop("name", "cp_lrp"), **kw)

    def _default(self, graph, node):
        gate = attention_weights_operand(graph, node) if node.op == "matmul" else None
        return GateEpsilon(gate, self.stabilizer) if gate is not None else super()._default(graph, node)


#: Named composites: name -> factory taking keyword arguments.
COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon_plus": EpsilonPlus,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "excitation_backprop": ExcitationBackprop,
    "attnlrp": AttnLRP,
    "cp_lrp": CPLRP,
}


def register_composite(name: str, factory: Callable[..., Composite]) -> None:
    """Make ``factory`` available under ``name`` for :func:`get_composite`."""
    COMPOSITES[name] = factory


_CALL = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\((.*)\))?\s*$")


def _parse_args(text: str, spec: str) -> tuple:
    args, kwargs = [], {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        key, _, val = part.rpartition("=")
        try:
            v = float(val)
        except ValueError:
            raise RuleError(f"composite '{spec}': argument '{part}' is not a number") from None
        if key:
            kwargs[key.strip()] = v
        else:
            args.append(v)
    return args, kwargs


def get_composite(spec) -> Composite:
    """Turn a name, a call-like string (``"epsilon_gamma_box(low=-3, high=3)"``)
    or a Composite into a Composite."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, str):
        m = _CALL.match(spec)
        if not m or m.group(1).lower() not in COMPOSITES:
            raise RuleError(f"unknown composite '{spec}'; known: {', '.join(sorted(COMPOSITES))}")
        args, kwargs = _parse_args(m.group(2) or "", spec)
        try:
            return COMPOSITES[m.group(1).lower()](*args, **kwargs)
        except TypeError as e:
            raise RuleError(f"composite '{spec}': {e}") from None
    raise RuleError(f"a composite must be a name or a Composite, got {type(spec).__name__}")
