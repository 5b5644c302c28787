"""Captum 0.9.0's LRP as a peer of the CPU bench.

Captum's LRP (``captum.attr.LRP``) has a fixed set of rules, set per leaf module as
``module.rule``: ``EpsilonRule``, ``GammaRule`` (``W + gamma W+``; the bias kept or
zeroed), ``Alpha1_Beta0_Rule`` (``W+``; the bias kept or zeroed) and ``IdentityRule``.
None of the bench's composites can be expressed exactly:

- there is no Flat rule and no ZBox rule (the composites' first layer);
- no AlphaBeta other than alpha=1, beta=0, and no input sign split;
- ``Alpha1_Beta0_Rule`` and ``GammaRule`` put the whole bias (or none) into ``z``,
  where fastlrp (as zennit) puts ``b+`` (ZPlus) or ``b + gamma b+`` (Gamma);
  ``GammaRule`` has no branch for negative ``z``.

So each composite is mapped to the closest rules Captum has (``CAPTUM_RULES``, with
what differs), and Captum's attribution is checked against fastlrp computing exactly
those rules (``matched_composite``): the timing is then of a known computation,
labelled as a different rule set. BatchNorm is folded into the convolution before it,
as fastlrp does (Captum's EpsilonRule on an unfolded BatchNorm is a different rule).
Captum has no rule for ``nn.Flatten``: it gets Captum's ``EpsilonRule`` with a
negligible epsilon (``PASS_EPSILON``), which on a reshape hands relevance through, as
do max pooling and the folded BatchNorm. Residual adds must be Captum's
``Addition_Module`` (``models.build(name, zennit_sum="captum")``); they and average
pooling keep Captum's EpsilonRule(1e-9), fastlrp's Norm with that stabilizer.
Models with layers Captum has no rule for (Hardswish, a multiplicative gate) fail, and
the bench says so with Captum's message.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np

#: Captum's EpsilonRule with this epsilon hands relevance through a reshape (and a folded
#: BatchNorm, an identity) and gives a max pooling window's relevance to its maximum, as
#: fastlrp does (x / (x + eps) = 1 in float32 for |x| > 1e-23; Captum's default, 1e-9, is
#: not negligible for small activations)
PASS_EPSILON = 1e-30

#: per bench composite: the Captum rule of the first dense/conv layer, the other convs and
#: the other dense layers as (class name in captum.attr._utils.lrp_rules, kwargs), and
#: what differs from the composite (Alpha1_Beta0 and Gamma stabilize with 1e-9, fastlrp
#: with 1e-6; Captum splits no inputs by sign, which only the first layer's inputs need)
CAPTUM_RULES = {
    "epsilon_plus_flat": {
        "first": ("EpsilonRule", {"epsilon": 1e-6}),
        "conv": ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}),
        "dense": ("EpsilonRule", {"epsilon": 1e-6}),
        "differs": "first layer Epsilon (Captum has no Flat), conv ZPlus without bias (b+ in fastlrp)",
    },
    "epsilon_alpha2_beta1_flat": {
        "first": ("EpsilonRule", {"epsilon": 1e-6}),
        "conv": ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}),
        "dense": ("EpsilonRule", {"epsilon": 1e-6}),
        "differs": "first layer Epsilon (no Flat), conv Alpha1Beta0 without bias (Captum has no Alpha2Beta1)",
    },
    "epsilon_gamma_box": {
        "first": ("EpsilonRule", {"epsilon": 1e-6}),
        "conv": ("GammaRule", {"gamma": 0.25, "set_bias_to_zero": False}),
        "dense": ("EpsilonRule", {"epsilon": 1e-6}),
        "differs": "first conv Epsilon (Captum has no ZBox), conv Gamma with the whole bias b (b + 0.25 b+ in fastlrp) "
                   "and without its z<0 branch",
    },
}


def matched_composite(comp_key: str):
    """The fastlrp composite that computes what Captum computes with ``CAPTUM_RULES``,
    or None where fastlrp has no such rule (Captum's GammaRule: ``W + gamma W+`` with the
    whole bias and no z < 0 branch). Exact on ReLU networks, where every conv but the
    first sees non-negative inputs; adds and average pooling get Norm with Captum's
    stabilizer, 1e-9."""
    import fastlrp
    from fastlrp.rules import Epsilon, ZPlus

    same = {
        "EpsilonRule": lambda kw: Epsilon(kw["epsilon"]),
        # Captum's stabilizer for the rules without an epsilon: PropagationRule.STABILITY_FACTOR
        "Alpha1_Beta0_Rule": lambda kw: ZPlus(1e-9, zero_bias=kw["set_bias_to_zero"], split_inputs=False),
    }
    spec = CAPTUM_RULES[comp_key]
    if any(spec[k][0] not in same for k in ("first", "conv", "dense")):
        return None
    rule = {k: same[spec[k][0]](spec[k][1]) for k in ("first", "conv", "dense")}
    return fastlrp.Composite({"conv": rule["conv"], "dense": rule["dense"]}, first=rule["first"],
                             first_types=first_types(comp_key), stabilizer=1e-9, name=f"captum_{comp_key}")


def first_types(comp_key: str) -> tuple:
    """The layer types the composite's first-layer rule goes to (ZBox: the first conv)."""
    return ("conv",) if comp_key == "epsilon_gamma_box" else ("linear",)


def _call_order(model, x):
    """Leaf modules in the order they run, each with its input and output tensors."""
    import torch

    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i, o)))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def fold_batchnorm(model, x):
    """A copy of ``model`` with every BatchNorm2d whose input is a Conv2d's output folded
    into that convolution and left as an exact identity (mean 0, var 1, eps 0); and
    the list of those BatchNorm modules."""
    import torch
    from torch import nn

    model = copy.deepcopy(model)
    calls = _call_order(model, x)
    made_by = {id(o): m for m, _, o in calls}
    folded = []
    with torch.no_grad():
        for m, inp, _ in calls:
            conv = made_by.get(id(inp[0]))
            if not (isinstance(m, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d)):
                continue
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(m.bias)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - m.running_mean) * scale + m.bias)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.eps = 0.0
            folded.append(m)
    return model, folded


class CaptumRunner:
    """``captum.attr.LRP`` on a BatchNorm-folded copy of ``model`` with the rules of
    ``CAPTUM_RULES[comp_key]``; called like the bench's ZennitRunner."""

    def __init__(self, model, comp_key, example):
        import torch
        from captum.attr import LRP
        from captum.attr._utils import lrp_rules  # Captum's documented home of its rules
        from torch import nn

        self.torch = torch
        x = torch.from_numpy(np.ascontiguousarray(example))
        self.model, folded = fold_batchnorm(model, x)
        spec = CAPTUM_RULES[comp_key]
        first = (nn.Conv2d,) if first_types(comp_key) == ("conv",) else (nn.Conv2d, nn.Linear)
        first_layer, self.rules = None, []
        for m, _, _ in _call_order(self.model, x):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if first_layer is None and isinstance(m, first):
                    first_layer = m
                key = "first" if m is first_layer else ("conv" if isinstance(m, nn.Conv2d) else "dense")
                name, kw = spec[key]
                self.rules.append((m, getattr(lrp_rules, name)(**kw)))
            elif isinstance(m, (nn.Flatten, nn.MaxPool2d)) or any(m is f for f in folded):
                self.rules.append((m, lrp_rules.EpsilonRule(PASS_EPSILON)))
        self.lrp = LRP(self.model)

    def __call__(self, x, targets):
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x))
        results = []
        for t in targets:
            for m, rule in self.rules:  # Captum deletes every module's rule after a call
                m.rule = rule
            with warnings.catch_warnings():  # "Input Tensor 0 did not already require gradients"
                warnings.simplefilter("ignore", UserWarning)
                results.append(self.lrp.attribute(xt, target=torch.from_numpy(np.asarray(t))).detach())
        return results[0].numpy() if len(results) == 1 else torch.stack(results, 1).numpy()
