"""LXT 2.1's relevance on a small random torchvision VisionTransformer, for the parity
tests of tests/test_vit.py.

Run as a script, it writes the fixture those tests read in CI, where LXT and
torchvision are not installed (``python tests/lxt_vit.py``; needs lxt==2.1,
transformers==4.52.4, torchvision and zennit): ``tests/fixtures/lxt_vit_graph.npz`` (the
model imported with fastlrp) and ``tests/fixtures/lxt_vit_relevance.npz`` (input,
targets, LXT's relevance per rule set). The live test runs ``python tests/lxt_vit.py
--out FILE`` in a subprocess, because LXT's monkey patches change torch.nn classes for
the whole process (they are undone between rule sets).

LXT's efficient mode is Gradient x Input with modified gradients; the rule sets:

``cp``        ``lxt.efficient.models.vit_torch.cp_LRP`` (GELU identity, LayerNorm with
              the std detached, MultiheadAttention with query and key detached), LRP-0 on
              every Linear/Conv (no zennit rules).
``cp_gamma``  the same with zennit's Gamma(0.25) on nn.Linear and nn.Conv2d through
              ``lxt.efficient.monkey_patch_zennit`` (LXT's ViT example). MultiheadAttention
              never calls its projections as modules, so they stay LRP-0.
``attn``      AttnLRP inside attention: LXT 2.1 ships no AttnLRP patch for torchvision's
              MultiheadAttention; this one applies LXT's own ``divide_gradient`` to query,
              key and value (1/4, 1/4, 1/2) as LXT's attention wrapper for Hugging Face
              models does, with cp_LRP's GELU and LayerNorm patches; LRP-0 elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from functools import partial

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
GRAPH = os.path.join(FIXTURES, "lxt_vit_graph.npz")
RELEVANCE = os.path.join(FIXTURES, "lxt_vit_relevance.npz")
RULE_SETS = ("cp", "cp_gamma", "attn")
GAMMA = 0.25


def fastlrp_composite(rule_set, epsilon=0.0):
    """The fastlrp composite matching an LXT rule set (LRP-0 is ``epsilon`` 0; a float32 run
    wants a tiny one, see bench/bench_vit.py)."""
    from fastlrp.composites import CPLRP
    from fastlrp.rules import Epsilon, Gamma

    if rule_set == "cp":
        return f"cp_lrp(epsilon={epsilon!r})"
    if rule_set == "attn":
        return f"attnlrp(epsilon={epsilon!r})"
    if rule_set == "cp_gamma":
        # zennit's Gamma (stabilizer 1e-6) on nn.Linear / nn.Conv2d; MultiheadAttention's
        # projections are not called as modules, so LXT leaves them at LRP-0
        return CPLRP(epsilon=epsilon, layer_map={"linear": Gamma(GAMMA, 1e-6)},
                     names={r"re:.*self_attention\..*_proj": Epsilon(epsilon)},
                     name=f"cp_lrp(epsilon={epsilon!r}) with Gamma({GAMMA}, 1e-6) on dense/conv, "
                          f"Epsilon({epsilon!r}) on the attention projections")
    raise ValueError(f"unknown LXT rule set {rule_set!r}; one of {RULE_SETS}")


def register_zennit_gamma(model):
    """LXT's ViT example: zennit's Gamma(GAMMA) on nn.Conv2d and nn.Linear through
    ``lxt.efficient.monkey_patch_zennit``; returns the registered composite (``.remove()``)."""
    import torch
    import lxt.efficient as le
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    le.monkey_patch_zennit()
    comp = LayerMapComposite([(torch.nn.Conv2d, Gamma(GAMMA)), (torch.nn.Linear, Gamma(GAMMA))])
    comp.register(model)
    return comp


def build_vit(tv, torch):
    """image 32, patch 8, 2 layers, 4 heads, hidden 16, float64, random weights (the
    zero-initialised head re-initialised), and an input batch of 3."""
    torch.manual_seed(0)
    m = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=16,
                                    mlp_dim=32, num_classes=5).eval().double()
    torch.nn.init.normal_(m.heads.head.weight)
    torch.nn.init.normal_(m.heads.head.bias, std=0.1)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    return m, x


def patch_lxt(tv, rule_set):
    """Apply LXT's monkey patches of a rule set to torchvision's ViT classes."""
    import lxt.efficient as le
    from lxt.efficient.models import vit_torch
    from lxt.efficient.patches import patch_method
    from lxt.efficient.rules import divide_gradient

    vt = tv.models.vision_transformer
    if rule_set in ("cp", "cp_gamma"):
        le.monkey_patch(vt, vit_torch.cp_LRP)
        return

    def attention(self, query, key, value, *args, **kwargs):
        return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4), divide_gradient(value, 2),
                                     *args, **kwargs)

    patches = dict(vit_torch.cp_LRP)
    patches[vt.nn.MultiheadAttention] = partial(patch_method, attention, keep_original=True)
    le.monkey_patch(vt, patches)


def lxt_relevance():
    """LXT's relevance x * grad of the target logits for every rule set: {name: R}, x, target."""
    import torch

    sys.path.insert(0, HERE)
    from _zoo import load_torchvision

    tv = load_torchvision()
    m, x = build_vit(tv, torch)
    with torch.no_grad():
        target = m(x).argmax(1)
    nn = tv.models.vision_transformer.nn
    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
    saved = [dict(c.__dict__) for c in classes]
    res = {"x": x.numpy(), "target": target.numpy()}
    for rs in RULE_SETS:
        res[rs] = _relevance(tv, torch, m, x, target, rs)
        for c, d in zip(classes, saved):  # undo LXT's patches
            for k in ("forward", "original_forward"):
                if k in d:
                    setattr(c, k, d[k])
                elif k in c.__dict__:
                    delattr(c, k)
    return res


def _relevance(tv, torch, m, x, target, rule_set):
    patch_lxt(tv, rule_set)
    comp = register_zennit_gamma(m) if rule_set == "cp_gamma" else None
    xg = x.clone().requires_grad_()
    y = m(xg)
    y[torch.arange(len(x)), target].sum().backward()
    if comp is not None:
        comp.remove()
    return (xg * xg.grad).detach().numpy()


def run_lxt(out_dir):
    """:func:`lxt_relevance` in a subprocess."""
    path = os.path.join(out_dir, "lxt.npz")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--out", path], check=True, capture_output=True,
                   text=True, timeout=600)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write LXT's relevance to this file only (no fixture)")
    a = ap.parse_args()
    if a.out:
        np.savez(a.out, **lxt_relevance())
        return
    import torch

    import fastlrp
    from _zoo import load_torchvision

    os.makedirs(FIXTURES, exist_ok=True)
    m, x = build_vit(load_torchvision(), torch)
    fastlrp.from_torch(m, x, name="lxt_vit").save(GRAPH)
    res = lxt_relevance()  # after the import: the patches change the classes the importer recognises
    np.savez_compressed(RELEVANCE, lxt_version=importlib.metadata.version("lxt"), torch_version=torch.__version__,
                        **res)
    print(f"wrote {GRAPH} and {RELEVANCE}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
