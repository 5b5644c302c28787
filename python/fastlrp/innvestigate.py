"""Composites and ``create_analyzer`` that reproduce iNNvestigate 2.1.2's LRP analyzers.

iNNvestigate (``innvestigate.create_analyzer(name, model, **kwargs)``, Keras 2 / TF <= 2.14)
names its LRP analyzers ``"lrp.z"``, ``"lrp.epsilon"``, ``"lrp.alpha_2_beta_1"``,
``"lrp.sequential_preset_a"`` and so on. This module computes what those analyzers
compute, with iNNvestigate's conventions spelled out as named rule options
(``docs/innvestigate.md`` has the details, the measured agreement and a migration table):

- every division is iNNvestigate's ``safe_divide`` (only exact zeros replaced by
  ``1e-7``): ``guard="zero"`` on Z, AlphaBeta, ZPlus, WSquare, Add and average
  pooling; its Epsilon rule is the sign-aligned ``z + eps * sign(z)``, fastlrp's own;
- AlphaBeta with the whole bias in both denominators: ``AlphaBeta(whole_bias=True)``;
- ZPlus is ``Alpha1Beta0IgnoreBias``; ZPlusFast is ``W+`` on the inputs as they are:
  ``ZPlus(split_inputs=False)``; W-square and Flat ignore the bias;
- Keras activation *layers* other than ``Activation`` (``ReLU``, ``LeakyReLU``,
  ``ELU``, ``Softmax``) by their gradient: :class:`~fastlrp.rules.Gradient` (read
  from ``graph.meta["keras_activation_layers"]``, which :func:`fastlrp.from_keras`
  writes); ``Activation`` layers and ``activation=`` pass relevance;
- BatchNormalization as a layer of its own with the analyzer's rule (``bn_layer_rule``):
  import with ``from_keras(model, fold_batchnorm=False)``, as :func:`create_analyzer`
  does. iNNvestigate's own surrogate of the layer is wrong (``sqrt(var**2 + eps)``, the
  shift without ``gamma``); fastlrp applies the rule to the layer the model computes;
- the input-layer rule on every kernel layer fed by the input through
  Flatten/Reshape/Permute (``is_input_layer``).

The composites are registered for :func:`fastlrp.get_composite` under iNNvestigate's
names, lower case (``"lrp.alpha_2_beta_1_ib"``, ``"lrp.epsilon(epsilon=0.01)"``).
``"lrp.z_ib"`` and ``"lrp.epsilon_ib"`` are fastlrp aliases: iNNvestigate 2.1.2 has
no analyzers of those names (its spelling is ``create_analyzer("lrp.epsilon", model,
bias=False)``).
"""

from __future__ import annotations

import numpy as np

from .composites import Composite, register_composite
from .graph import PARAMETRIC_OPS, Graph
from .rules import AlphaBeta, AlphaBetaX, Epsilon, Flat, Gradient, Norm, Rule, RuleError, WSquare, ZBox, ZPlus

__all__ = [
    "INNVESTIGATE_EPSILON",
    "InnvestigateComposite",
    "Analyzer",
    "create_analyzer",
    "innvestigate_rule",
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
_EPS = INNVESTIGATE_EPSILON

#: Ops that only route data (iNNvestigate's ``is_input_layer`` looks through these).
_ROUTING = ("reshape", "permute")

#: iNNvestigate's Add and average-pooling handlers: the Z rule, safe-divided.
_SHARE = Norm(_EPS, guard="zero")


def _z(bias=True):
    return Epsilon(_EPS, zero_bias=not bias, guard="zero")


def _epsilon(epsilon=_EPS, bias=True):
    if not float(epsilon) > 0:
        raise RuleError(f"iNNvestigate's epsilon must be > 0, got {epsilon}")
    return Epsilon(float(epsilon), zero_bias=not bias)


def _alpha_beta(alpha, beta, bias=True):
    return AlphaBeta(float(alpha), float(beta), _EPS, zero_bias=not bias, guard="zero", whole_bias=bool(bias))


def _alpha_x(alpha, beta):
    # iNNvestigate 2.1.2's AlphaBetaXRule weighs x- W- by beta[1] (not alpha[1]): its coefficients as computed
    return AlphaBetaX((alpha[0], beta[1]), beta, _EPS, guard="zero")


#: iNNvestigate's rule names (``LRP_RULES`` and the AlphaBetaX presets) -> fastlrp rule.
RULES = {
    "Z": _z(),
    "Epsilon": _epsilon(),
    "WSquare": WSquare(_EPS, zero_bias=True, guard="zero"),
    "Flat": Flat(0.0),  # tap counts >= 1: safe_divide never guards
    "Alpha2Beta1": _alpha_beta(2, 1),
    "Alpha2Beta1IgnoreBias": _alpha_beta(2, 1, bias=False),
    "Alpha1Beta0": _alpha_beta(1, 0),
    "Alpha1Beta0IgnoreBias": _alpha_beta(1, 0, bias=False),
    "ZPlus": _alpha_beta(1, 0, bias=False),
    "ZPlusFast": ZPlus(_EPS, zero_bias=True, guard="zero", split_inputs=False),
    "Bounded": ZBox(-1.0, 1.0, _EPS),
    "AlphaBetaX1000": _alpha_x((1, 0), (0, 0)),
    "AlphaBetaX1010": _alpha_x((1, 0), (0, -1)),
    "AlphaBetaX1001": _alpha_x((1, 1), (0, 0)),
    "AlphaBetaX2m100": _alpha_x((2, 0), (1, 0)),
}


def innvestigate_rule(rule) -> Rule:
    """iNNvestigate's rule name (``"Z"``, ``"Alpha1Beta0"``, ``"AlphaBetaX2m100"``, with or
    without a ``Rule`` suffix), a ``(low, high)`` tuple (its Bounded rule), or a fastlrp
    :class:`~fastlrp.rules.Rule` (used as given) -> the fastlrp rule."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, tuple) and len(rule) == 2:
        return ZBox(float(rule[0]), float(rule[1]), _EPS)
    name = getattr(rule, "__name__", rule)
    if isinstance(name, str):
        key = name[:-4] if name.endswith("Rule") and name[:-4] in RULES else name
        if key in RULES:
            return RULES[key]
        if key in ("AlphaBeta", "AlphaBetaIgnoreBias"):
            raise RuleError(f"iNNvestigate's rule '{name}' needs alpha and beta: use "
                            "create_analyzer('lrp.alpha_beta', model, alpha=..., beta=..., bias=...)")
    raise RuleError(f"unknown iNNvestigate rule {rule!r}; known: {', '.join(RULES)}, a (low, high) tuple "
                    "or a fastlrp Rule")


class InnvestigateComposite(Composite):
    """A composite that maps a graph's nodes as iNNvestigate 2.1.2's LRP analyzers do.

    Parameters
    ----------
    layer_map : sequence of (key, Rule)
        Rules of the kernel layers by type (``[("linear", rule)]``, or ``"dense"`` and
        ``"conv"`` for the presets' conditions).
    input_rule : Rule, optional
        iNNvestigate's ``input_layer_rule``: every kernel layer whose inputs all come
        from the model input, through Flatten/Reshape/Permute
        (``innvestigate.backend.checks.is_input_layer``), not only the first one.
    bn_rule : Rule
        ``bn_layer_rule``, the rule of ``batchnorm`` nodes (BatchNormalization kept
        as a layer: ``from_keras(..., fold_batchnorm=False)``). Default:
        Epsilon(1e-7), which is what iNNvestigate's dedicated BatchNorm handler
        computes, ``R x (y - beta) / ((x - mean) y)``.
    until : (names, Rule), optional
        ``until_layer_idx`` / ``until_layer_rule``: the rule of the kernel layers named
        (those of Keras' ``model.layers[:until_layer_idx + 1]``).

    Add and average pooling get the safe-divided share ``Norm(1e-7, guard="zero")``;
    activation nodes listed in ``graph.meta["keras_activation_layers"]`` get
    :class:`~fastlrp.rules.Gradient`; max pooling (arg-max routing), reshapes and
    ``Activation`` layers (pass) are fastlrp's defaults and iNNvestigate's.
    Precedence as in iNNvestigate: input rule, then ``until``, then the layer map.
    """

    def __init__(self, layer_map, input_rule=None, bn_rule=None, until=None, name="innvestigate",
                 stabilizer=INNVESTIGATE_EPSILON, **kw):
        structural = [("batchnorm", bn_rule if bn_rule is not None else Epsilon(_EPS)), ("add", _SHARE),
                      ("avgpool", _SHARE)]
        super().__init__(list(layer_map) + structural, stabilizer=stabilizer, name=name, **kw)
        self.input_rule = input_rule
        self.until = until

    def _positional(self, graph: Graph) -> dict:
        out = super()._positional(graph)
        present = {n.name for n in graph.nodes}
        for node in graph.meta.get("keras_activation_layers") or {}:
            if node in present and graph[node].op == "activation":
                out[node] = Gradient()
        if self.until is not None:
            names, rule = self.until
            for n in graph.nodes:
                if n.op in PARAMETRIC_OPS and n.name.split("/")[0] in names:
                    out[n.name] = rule
        if self.input_rule is not None:
            fed_by_input = {graph.input.name}
            for n in graph.nodes:
                if n.op in _ROUTING and all(i in fed_by_input for i in n.inputs):
                    fed_by_input.add(n.name)
            for n in graph.nodes:
                if n.op in PARAMETRIC_OPS and all(i in fed_by_input for i in n.inputs):
                    out[n.name] = self.input_rule
        return out


def _all(rule, name, bn_rule=None, **kw):
    """One rule on every kernel layer and, as iNNvestigate's analyzers do, at BatchNorm."""
    return InnvestigateComposite([("linear", rule)], bn_rule=rule if bn_rule is None else bn_rule, name=name, **kw)


def lrp_z(**kw):
    """``lrp.z``: the Z rule (safe-divided ``R / z``, bias kept) on every kernel layer and BatchNorm."""
    return _all(_z(), "lrp.z", **kw)


def lrp_z_ib(**kw):
    """``lrp.z_ib`` (a fastlrp alias, no analyzer of iNNvestigate 2.1.2): the Z rule without bias."""
    return _all(_z(bias=False), "lrp.z_ib", **kw)


def lrp_epsilon(epsilon=INNVESTIGATE_EPSILON, bias=True, **kw):
    """``lrp.epsilon``: Epsilon(``epsilon``, default 1e-7; ``bias=False`` drops the biases)."""
    return _all(_epsilon(epsilon, bool(bias)), "lrp.epsilon", **kw)


def lrp_epsilon_ib(epsilon=INNVESTIGATE_EPSILON, **kw):
    """``lrp.epsilon_ib`` (a fastlrp alias): ``lrp.epsilon`` with ``bias=False``."""
    return _all(_epsilon(epsilon, False), "lrp.epsilon_ib", **kw)


def lrp_w_square(**kw):
    """``lrp.w_square``: W^2 rule without bias."""
    return _all(RULES["WSquare"], "lrp.w_square", **kw)


def lrp_flat(**kw):
    """``lrp.flat``: Flat on every kernel layer."""
    return _all(RULES["Flat"], "lrp.flat", **kw)


def lrp_alpha_beta(alpha=None, beta=None, bias=True, **kw):
    """``lrp.alpha_beta``: AlphaBeta(alpha, beta) with the whole bias in both sums
    (``bias=False``: none); one of alpha/beta may be omitted (``alpha - beta = 1``)."""
    if alpha is None and beta is None:
        raise RuleError("lrp.alpha_beta needs alpha or beta (alpha - beta = 1), e.g. 'lrp.alpha_beta(alpha=3)'")
    alpha = float(beta) + 1.0 if alpha is None else float(alpha)
    beta = alpha - 1.0 if beta is None else float(beta)
    return _all(_alpha_beta(alpha, beta, bool(bias)), "lrp.alpha_beta", **kw)


def lrp_alpha_2_beta_1(**kw):
    """``lrp.alpha_2_beta_1``: AlphaBeta(2, 1), whole bias in both sums."""
    return _all(RULES["Alpha2Beta1"], "lrp.alpha_2_beta_1", **kw)


def lrp_alpha_2_beta_1_ib(**kw):
    """``lrp.alpha_2_beta_1_IB``: AlphaBeta(2, 1) without bias."""
    return _all(RULES["Alpha2Beta1IgnoreBias"], "lrp.alpha_2_beta_1_ib", **kw)


def lrp_alpha_1_beta_0(**kw):
    """``lrp.alpha_1_beta_0``: AlphaBeta(1, 0), whole bias."""
    return _all(RULES["Alpha1Beta0"], "lrp.alpha_1_beta_0", **kw)


def lrp_alpha_1_beta_0_ib(**kw):
    """``lrp.alpha_1_beta_0_IB``: AlphaBeta(1, 0) without bias."""
    return _all(RULES["Alpha1Beta0IgnoreBias"], "lrp.alpha_1_beta_0_ib", **kw)


def lrp_z_plus(**kw):
    """``lrp.z_plus``: iNNvestigate's ZPlusRule = Alpha1Beta0IgnoreBias."""
    return _all(RULES["ZPlus"], "lrp.z_plus", **kw)


def lrp_z_plus_fast(**kw):
    """``lrp.z_plus_fast``: ``z = W+ x`` without bias, inputs as they are (not split by
    sign): ``ZPlus(split_inputs=False)``. Equal to ``lrp.z_plus`` for ``x >= 0``."""
    return _all(RULES["ZPlusFast"], "lrp.z_plus_fast", **kw)


def _preset(conv_rule, name, epsilon, flat, bn_layer_rule="AlphaBetaX2m100", **kw):
    return InnvestigateComposite(
        [("dense", _epsilon(epsilon)), ("conv", conv_rule)],
        input_rule=RULES["Flat"] if flat else kw.pop("input_rule", None),
        bn_rule=innvestigate_rule(bn_layer_rule), name=name, **kw,
    )


def lrp_sequential_preset_a(epsilon=0.1, **kw):
    """``lrp.sequential_preset_a``: Dense: Epsilon(0.1); Conv: Alpha1Beta0; BatchNorm: AlphaBetaX2m100."""
    return _preset(RULES["Alpha1Beta0"], "lrp.sequential_preset_a", epsilon, False, **kw)


def lrp_sequential_preset_b(epsilon=0.1, **kw):
    """``lrp.sequential_preset_b``: Dense: Epsilon(0.1); Conv: Alpha2Beta1; BatchNorm: AlphaBetaX2m100."""
    return _preset(RULES["Alpha2Beta1"], "lrp.sequential_preset_b", epsilon, False, **kw)


def lrp_sequential_preset_a_flat(epsilon=0.1, **kw):
    """``lrp.sequential_preset_a_flat``: preset A with Flat on the input layer(s)."""
    return _preset(RULES["Alpha1Beta0"], "lrp.sequential_preset_a_flat", epsilon, True, **kw)


def lrp_sequential_preset_b_flat(epsilon=0.1, **kw):
    """``lrp.sequential_preset_b_flat``: preset B with Flat on the input layer(s)."""
    return _preset(RULES["Alpha2Beta1"], "lrp.sequential_preset_b_flat", epsilon, True, **kw)


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


# --------------------------------------------------------------------------------------
# create_analyzer: iNNvestigate's spelling
# --------------------------------------------------------------------------------------
#: Keyword arguments of each analyzer of iNNvestigate 2.1.2 that change its relevance
#: (beyond the ones every LRP analyzer takes, _COMMON).
_ANALYZER_KWARGS = {
    "lrp": ("rule", "bn_layer_rule"),
    "lrp.epsilon": ("epsilon", "bias"),
    "lrp.alpha_beta": ("alpha", "beta", "bias"),
    "lrp.sequential_preset_a": ("epsilon", "bn_layer_rule"),
    "lrp.sequential_preset_b": ("epsilon", "bn_layer_rule"),
    "lrp.sequential_preset_a_flat": ("epsilon", "bn_layer_rule"),
    "lrp.sequential_preset_b_flat": ("epsilon", "bn_layer_rule"),
    "lrp.sequential_preset_b_flat_until_idx": ("epsilon", "bn_layer_rule"),
}
_COMMON = ("input_layer_rule", "until_layer_idx", "until_layer_rule", "bn_layer_fuse_mode", "neuron_selection_mode")
#: Accepted and without effect on the relevance (iNNvestigate's model checks and debugging aids).
_IGNORED = ("disable_model_checks", "allow_lambda_layers", "reverse_verbose", "reverse_clip_values",
            "reverse_project_bottleneck_layers", "reverse_check_min_max_values", "reverse_check_finite",
            "reverse_keep_tensors", "reverse_reapply_on_copied_layers")

_UNTIL_IDX = "lrp.sequential_preset_b_flat_until_idx"


def _generic_rule(rule):
    """``LRP(rule=...)``: a rule name or Rule for every kernel layer, or conditions
    ``[(layer-type key, rule), ...]`` ("dense", "conv", "linear")."""
    if isinstance(rule, (list, tuple)) and rule and isinstance(rule[0], (list, tuple)):
        return [(str(k), innvestigate_rule(r)) for k, r in rule]
    if rule is None:
        raise RuleError("create_analyzer('lrp', ...) needs rule=... (an iNNvestigate rule name such as 'Z')")
    return [("linear", innvestigate_rule(rule))]


def _composite(name, model_layers, kw):
    """The composite of analyzer ``name`` with iNNvestigate's keyword arguments ``kw``."""
    extra = {}
    if kw.get("input_layer_rule") is not None:
        extra["input_rule"] = innvestigate_rule(kw["input_layer_rule"])
    idx = kw.get("until_layer_idx")
    until_rule = RULES["Flat"] if name == _UNTIL_IDX else kw.get("until_layer_rule")
    if idx is not None and until_rule is not None:
        if model_layers is None:
            raise RuleError("until_layer_idx counts Keras' model.layers: pass the Keras model or its file to "
                            "create_analyzer, not a graph")
        extra["until"] = (set(model_layers[: int(idx) + 1]), innvestigate_rule(until_rule))
    if name == "lrp":
        bn = kw.get("bn_layer_rule")
        return InnvestigateComposite(_generic_rule(kw.get("rule")),
                                     bn_rule=None if bn is None else innvestigate_rule(bn), name="lrp", **extra)
    if name.startswith("lrp.sequential_preset"):
        base = "lrp.sequential_preset_b_flat" if name == _UNTIL_IDX else name
        args = {k: kw[k] for k in ("epsilon", "bn_layer_rule") if k in kw}
        if base.endswith("_flat") and extra.pop("input_rule", RULES["Flat"]) != RULES["Flat"]:
            raise RuleError(f"{name} sets input_layer_rule='Flat' itself (iNNvestigate refuses another one too)")
        return PRESETS[base](**args, **extra)
    args = {k: kw[k] for k in _ANALYZER_KWARGS.get(name, ()) if k in kw}
    return PRESETS[name](**args, **extra)


class Analyzer:
    """What :func:`create_analyzer` returns: ``analyze(X, neuron_selection=None)`` as iNNvestigate's.

    ``graph``, ``composite`` and ``explainer`` (a :class:`fastlrp.Explainer`) are the
    fastlrp objects behind it.
    """

    def __init__(self, name, graph, composite, neuron_selection_mode, backend):
        from .explain import Explainer

        if neuron_selection_mode not in ("max_activation", "index", "all"):
            raise RuleError(f"{name}: neuron_selection_mode must be 'max_activation', 'index' or 'all', got "
                            f"{neuron_selection_mode!r}")
        self.name, self.graph, self.composite = name, graph, composite
        self.neuron_selection_mode = neuron_selection_mode
        self.explainer = Explainer(graph, composite, backend=backend)

    def analyze(self, X, neuron_selection=None):
        """Relevance of ``X`` (a batch, in the model's own layout) for the output(s) the
        neuron selection mode picks: ``"max_activation"`` each sample's largest output,
        ``"index"`` the output(s) ``neuron_selection`` (an int, or one per sample),
        ``"all"`` every output seeded with its own value."""
        mode = self.neuron_selection_mode
        if (neuron_selection is not None) != (mode == "index"):
            raise RuleError(f"{self.name}: neuron_selection is needed with neuron_selection_mode='index' and only "
                            f"there (mode {mode!r})")
        if mode == "max_activation":
            target = None
        elif mode == "index":
            target = np.asarray(neuron_selection)
            if target.ndim == 0:
                target = int(target)
        else:
            target = np.asarray(self.explainer.forward(X), dtype=np.float64)
        return self.explainer.explain(X, target=target)


def create_analyzer(name: str, model, *, backend: str = "auto", **kwargs) -> Analyzer:
    """iNNvestigate 2.1.2's ``create_analyzer`` for its LRP analyzers.

    Parameters
    ----------
    name : str
        An LRP analyzer of iNNvestigate 2.1.2: ``"lrp"`` (with ``rule=``), ``"lrp.z"``,
        ``"lrp.epsilon"``, ``"lrp.w_square"``, ``"lrp.flat"``, ``"lrp.alpha_beta"``,
        ``"lrp.alpha_2_beta_1"``, ``"lrp.alpha_2_beta_1_IB"``, ``"lrp.alpha_1_beta_0"``,
        ``"lrp.alpha_1_beta_0_IB"``, ``"lrp.z_plus"``, ``"lrp.z_plus_fast"``,
        ``"lrp.sequential_preset_a"``, ``"lrp.sequential_preset_b"``, their ``_flat``
        versions and ``"lrp.sequential_preset_b_flat_until_idx"``.
    model : keras.Model, path or Graph
        A Keras model or its ``.keras`` / ``.h5`` file (imported with
        ``from_keras(model, fold_batchnorm=False)``: BatchNormalization stays a layer of
        its own, as in iNNvestigate), or a fastlrp graph (used as it is).
    backend : str
        The fastlrp backend (``"reference"`` computes in float64).
    **kwargs
        iNNvestigate's keyword arguments: ``epsilon`` and ``bias`` (``lrp.epsilon``),
        ``alpha``, ``beta``, ``bias`` (``lrp.alpha_beta``), ``epsilon`` and
        ``bn_layer_rule`` (the presets), ``rule`` and ``bn_layer_rule`` (``lrp``), and for
        every analyzer ``input_layer_rule`` (a rule name or ``(low, high)``),
        ``until_layer_idx`` / ``until_layer_rule``, ``neuron_selection_mode`` and
        ``bn_layer_fuse_mode="one_linear"``. ``disable_model_checks`` and the
        ``reverse_*`` debugging options are accepted and change nothing. Rules are
        iNNvestigate's names (``"Z"``, ``"Epsilon"``, ``"Flat"``, ``"Alpha1Beta0"``,
        ``"AlphaBetaX2m100"``, ...) or fastlrp rules.

    Returns
    -------
    Analyzer
        ``analyze(X, neuron_selection=None)`` -> relevance in ``X``'s layout.
    """
    from .importers.keras import from_keras, load_model

    key = name if name in ("lrp", _UNTIL_IDX) or name.lower() in PRESETS else None
    if key is None or name.lower() in ("lrp.z_ib", "lrp.epsilon_ib"):
        raise RuleError(f"'{name}' is not an LRP analyzer of iNNvestigate 2.1.2 (known: lrp, "
                        f"{', '.join(n for n in PRESETS if not n.endswith(('z_ib', 'epsilon_ib')))}, {_UNTIL_IDX}; "
                        "the '_IB' spellings of lrp.z / lrp.epsilon are bias=False)")
    key = key.lower()
    allowed = set(_ANALYZER_KWARGS.get(key, ())) | set(_COMMON) | set(_IGNORED)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"create_analyzer('{name}'): unexpected keyword argument(s) {', '.join(unknown)} "
                        f"(this analyzer takes {', '.join(sorted(allowed - set(_IGNORED)))})")
    if kwargs.get("bn_layer_fuse_mode", "one_linear") != "one_linear":
        raise RuleError(f"create_analyzer('{name}'): bn_layer_fuse_mode={kwargs['bn_layer_fuse_mode']!r} is not "
                        "supported (only 'one_linear', iNNvestigate's default)")
    layers = None
    if isinstance(model, Graph):
        graph = model
    else:
        if not hasattr(model, "layers"):
            model = load_model(model)
        layers = [layer.name for layer in model.layers]
        graph = from_keras(model, fold_batchnorm=False)
    composite = _composite(key, layers, kwargs)
    return Analyzer(name, graph, composite, kwargs.get("neuron_selection_mode", "max_activation"), backend)
