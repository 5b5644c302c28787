"""Composites that reproduce iNNvestigate's LRP analyzers.

iNNvestigate (``innvestigate.create_analyzer(name, model)``, Keras 2 / TF <= 2.14)
names its LRP analyzers ``"lrp.z"``, ``"lrp.epsilon"``, ``"lrp.alpha_2_beta_1"``,
``"lrp.sequential_preset_a"`` and so on. This module offers composites with the
same names, built from fastlrp's rules, and registers them for
:func:`fastlrp.get_composite` (lower-case: ``"lrp.z_ib"``, ``"lrp.epsilon"``,
``"lrp.sequential_preset_a_flat"``, ...; ``epsilon`` is a keyword argument
where iNNvestigate has one: ``"lrp.epsilon(epsilon=0.01)"``).

How iNNvestigate's rules map to fastlrp's (``docs/innvestigate.md`` has the
details and the references):

- Z: ``R / z`` with only exact zeros replaced by ``K.epsilon() = 1e-7``. Here:
  ``Epsilon(1e-7)``; the two differ by a relative ``1e-7 / |z|``.
- Epsilon(eps=1e-7): ``z + eps * (2 [z >= 0] - 1)``, the same stabilizer as
  fastlrp's ``Epsilon`` (sign(0) = +1). Exact.
- ``*_IB`` ("ignore bias") variants: ``zero_bias=True``. Exact.
- AlphaBeta: inputs and weights split by sign, as in fastlrp. iNNvestigate's
  bias-keeping version puts the **full** bias ``b = b+ + b-`` into both the
  activator and the inhibitor denominators (fastlrp and zennit: ``b+`` and
  ``b-``); the ``_IB`` versions, and any model without biases, are exact.
- Flat: in-bounds tap counts, no bias: fastlrp's ``Flat``. Exact.
- WSquare: no bias in the denominator (zennit squares the bias):
  ``WSquare(zero_bias=True)``. Exact.
- ZPlus: iNNvestigate's ``ZPlusRule`` is ``Alpha1Beta0IgnoreBias``:
  ``ZPlus(zero_bias=True)``. Exact.
- Sequential presets A/B: Epsilon(0.1) on Dense layers, Alpha1Beta0 (A) or
  Alpha2Beta1 (B) on every convolution; the ``_flat`` versions use Flat on the
  layers fed directly by the input (through Flatten/Reshape/Permute only).

Structural layers follow iNNvestigate as fastlrp does by default: Add and
average pooling share relevance in proportion to the inputs (their "Z" rule,
here ``Norm(1e-7)``), max pooling routes to the arg-max (the gradient), and
reshapes/concatenations route. BatchNormalization is folded into the adjacent
layer at import, whereas iNNvestigate treats it as a layer of its own.
"""

from __future__ import annotations

from .composites import Composite, register_composite
from .graph import PARAMETRIC_OPS, Graph
from .rules import AlphaBeta, Epsilon, Flat, RuleError, WSquare, ZPlus

__all__ = [
    "INNVESTIGATE_EPSILON",
    "InnvestigateComposite",
    "PRESETS",
    "lrp_z",
    "lrp_z_ib",
    "lrp_epsilon",
    "lrp_epsilon_ib",
    "lrp_w_square",
    "lrp_flat",
    "lrp_alpha_beta",
    "lrp_alpha_2_beta_1",
    "lrp_alpha_2_beta_1_ib",
    "lrp_alpha_1_beta_0",
    "lrp_alpha_1_beta_0_ib",
    "lrp_z_plus",
    "lrp_z_plus_fast",
    "lrp_sequential_preset_a",
    "lrp_sequential_preset_b",
    "lrp_sequential_preset_a_flat",
    "lrp_sequential_preset_b_flat",
]

#: ``keras.backend.epsilon()``: iNNvestigate's default epsilon and its safe-divide guard.
INNVESTIGATE_EPSILON = 1e-7

#: Ops that only route data (iNNvestigate's ``is_input_layer`` looks through these).
_ROUTING = ("reshape", "permute")


class InnvestigateComposite(Composite):
    """A composite whose "input layer" rule follows iNNvestigate.

    iNNvestigate's ``input_layer_rule`` applies to **every** layer with a kernel
    whose inputs all come from the model input, looking through Flatten,
    Reshape and Permute (``innvestigate.backend.checks.is_input_layer``), not
    only to the first layer in execution order. ``input_rule`` here does the
    same. Everything else is :class:`~fastlrp.composites.Composite`.

    The default Norm stabilizer for Add and average pooling is ``1e-7``
    (iNNvestigate divides by the sum with only exact zeros guarded).
    """

    def __init__(self, layer_map, input_rule=None, name="innvestigate", stabilizer=INNVESTIGATE_EPSILON, **kw):
        super().__init__(layer_map, stabilizer=stabilizer, name=name, **kw)
        self.input_rule = input_rule

    def _positional(self, graph: Graph) -> dict:
        out = super()._positional(graph)
        if self.input_rule is None:
            return out
        fed_by_input = {graph.input.name}
        for n in graph.nodes:
            if n.op in _ROUTING and all(i in fed_by_input for i in n.inputs):
                fed_by_input.add(n.name)
        for n in graph.nodes:
            if n.op in PARAMETRIC_OPS and all(i in fed_by_input for i in n.inputs):
                out[n.name] = self.input_rule
        return out


def _all(rule, name, **kw):
    return InnvestigateComposite([("linear", rule)], name=name, **kw)


def lrp_z(**kw):
    """``lrp.z``: the basic rule on every Dense/Conv (bias kept)."""
    return _all(Epsilon(INNVESTIGATE_EPSILON), "lrp.z", **kw)


def lrp_z_ib(**kw):
    """``lrp.z_IB``: the basic rule, biases ignored."""
    return _all(Epsilon(INNVESTIGATE_EPSILON, zero_bias=True), "lrp.z_ib", **kw)


def lrp_epsilon(epsilon=INNVESTIGATE_EPSILON, bias=True, **kw):
    """``lrp.epsilon``: Epsilon(``epsilon``, default 1e-7) on every Dense/Conv."""
    return _all(Epsilon(float(epsilon), zero_bias=not bias), "lrp.epsilon", **kw)


def lrp_epsilon_ib(epsilon=INNVESTIGATE_EPSILON, **kw):
    """``lrp.epsilon_IB``: Epsilon with biases ignored."""
    return _all(Epsilon(float(epsilon), zero_bias=True), "lrp.epsilon_ib", **kw)


def lrp_w_square(**kw):
    """``lrp.w_square``: W^2 rule without bias."""
    return _all(WSquare(INNVESTIGATE_EPSILON, zero_bias=True), "lrp.w_square", **kw)


def lrp_flat(**kw):
    """``lrp.flat``: Flat on every Dense/Conv."""
    return _all(Flat(0.0), "lrp.flat", **kw)


def lrp_alpha_beta(alpha=None, beta=None, bias=True, **kw):
    """``lrp.alpha_beta``: AlphaBeta(alpha, beta) on every Dense/Conv; one of
    alpha/beta may be omitted (``alpha - beta = 1``)."""
    if alpha is None and beta is None:
        raise RuleError("lrp.alpha_beta needs alpha or beta (alpha - beta = 1), e.g. 'lrp.alpha_beta(alpha=3)'")
    alpha = float(beta) + 1.0 if alpha is None else float(alpha)
    beta = alpha - 1.0 if beta is None else float(beta)
    return _all(AlphaBeta(alpha, beta, INNVESTIGATE_EPSILON, zero_bias=not bias), "lrp.alpha_beta", **kw)


def lrp_alpha_2_beta_1(**kw):
    """``lrp.alpha_2_beta_1`` (bias kept; see the module notes on the bias split)."""
    return _all(AlphaBeta(2.0, 1.0, INNVESTIGATE_EPSILON), "lrp.alpha_2_beta_1", **kw)


def lrp_alpha_2_beta_1_ib(**kw):
    """``lrp.alpha_2_beta_1_IB``: biases ignored (exact)."""
    return _all(AlphaBeta(2.0, 1.0, INNVESTIGATE_EPSILON, zero_bias=True), "lrp.alpha_2_beta_1_ib", **kw)


def lrp_alpha_1_beta_0(**kw):
    """``lrp.alpha_1_beta_0`` (bias kept; see the module notes on the bias split)."""
    return _all(AlphaBeta(1.0, 0.0, INNVESTIGATE_EPSILON), "lrp.alpha_1_beta_0", **kw)


def lrp_alpha_1_beta_0_ib(**kw):
    """``lrp.alpha_1_beta_0_IB``: biases ignored (exact)."""
    return _all(AlphaBeta(1.0, 0.0, INNVESTIGATE_EPSILON, zero_bias=True), "lrp.alpha_1_beta_0_ib", **kw)


def lrp_z_plus(**kw):
    """``lrp.z_plus``: iNNvestigate's ZPlusRule = Alpha1Beta0IgnoreBias."""
    return _all(ZPlus(INNVESTIGATE_EPSILON, zero_bias=True), "lrp.z_plus", **kw)


def lrp_z_plus_fast(**kw):
    """``lrp.z_plus_fast``: ``W+ x`` without bias. Equal to ``lrp.z_plus`` for
    inputs ``x >= 0`` (its only documented domain); fastlrp computes the
    sign-split ZPlus, which differs from iNNvestigate's for negative inputs."""
    return _all(ZPlus(INNVESTIGATE_EPSILON, zero_bias=True), "lrp.z_plus_fast", **kw)


def _preset(conv_rule, name, epsilon, flat):
    return InnvestigateComposite(
        [("dense", Epsilon(float(epsilon))), ("conv", conv_rule)],
        input_rule=Flat(0.0) if flat else None,
        name=name,
    )


def lrp_sequential_preset_a(epsilon=0.1):
    """``lrp.sequential_preset_a``: Dense: Epsilon(0.1); Conv: Alpha1Beta0 (bias kept)."""
    return _preset(AlphaBeta(1.0, 0.0, INNVESTIGATE_EPSILON), "lrp.sequential_preset_a", epsilon, False)


def lrp_sequential_preset_b(epsilon=0.1):
    """``lrp.sequential_preset_b``: Dense: Epsilon(0.1); Conv: Alpha2Beta1 (bias kept)."""
    return _preset(AlphaBeta(2.0, 1.0, INNVESTIGATE_EPSILON), "lrp.sequential_preset_b", epsilon, False)


def lrp_sequential_preset_a_flat(epsilon=0.1):
    """``lrp.sequential_preset_a_flat``: preset A with Flat on the input layer(s)."""
    return _preset(AlphaBeta(1.0, 0.0, INNVESTIGATE_EPSILON), "lrp.sequential_preset_a_flat", epsilon, True)


def lrp_sequential_preset_b_flat(epsilon=0.1):
    """``lrp.sequential_preset_b_flat``: preset B with Flat on the input layer(s)."""
    return _preset(AlphaBeta(2.0, 1.0, INNVESTIGATE_EPSILON), "lrp.sequential_preset_b_flat", epsilon, True)


#: iNNvestigate analyzer name (lower case) -> composite factory.
PRESETS = {
    "lrp.z": lrp_z,
    "lrp.z_ib": lrp_z_ib,
    "lrp.epsilon": lrp_epsilon,
    "lrp.epsilon_ib": lrp_epsilon_ib,
    "lrp.w_square": lrp_w_square,
    "lrp.flat": lrp_flat,
    "lrp.alpha_beta": lrp_alpha_beta,
    "lrp.alpha_2_beta_1": lrp_alpha_2_beta_1,
    "lrp.alpha_2_beta_1_ib": lrp_alpha_2_beta_1_ib,
    "lrp.alpha_1_beta_0": lrp_alpha_1_beta_0,
    "lrp.alpha_1_beta_0_ib": lrp_alpha_1_beta_0_ib,
    "lrp.z_plus": lrp_z_plus,
    "lrp.z_plus_fast": lrp_z_plus_fast,
    "lrp.sequential_preset_a": lrp_sequential_preset_a,
    "lrp.sequential_preset_b": lrp_sequential_preset_b,
    "lrp.sequential_preset_a_flat": lrp_sequential_preset_a_flat,
    "lrp.sequential_preset_b_flat": lrp_sequential_preset_b_flat,
}

for _name, _factory in PRESETS.items():
    register_composite(_name, _factory)
del _name, _factory
