"""Vision transformers: parity with LXT 2.1 (AttnLRP / CP-LRP) on a small random
torchvision VisionTransformer, and its import.

``test_lxt_fixture_parity`` runs everywhere: it reads the model (imported with
fastlrp) and LXT's relevance from tests/fixtures/, written by ``python
tests/lxt_vit.py`` where LXT is installed. ``test_lxt_live_parity`` recomputes LXT's
side (subprocesses: LXT's monkey patches change torch.nn classes process-wide) and
the import, and is skipped without lxt, transformers and torchvision.

Parity is max|R - R_lxt| / max|R_lxt| <= 1e-6 in float64; what is left (about 5e-9)
is LXT's identity rule on GELU, which divides by ``x + 1e-10``.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import fastlrp
import lxt_vit
from _nets import RTOL_NET, cuda_emu, rel_err

PARITY = 1e-6


def _check(graph, res):
    for rs in lxt_vit.RULE_SETS:
        comp = lxt_vit.fastlrp_composite(rs)
        got = fastlrp.Explainer(graph, comp, backend="reference").explain(res["x"], target=res["target"])
        err = rel_err(got, res[rs])
        assert err <= PARITY, f"{rs}: relative difference to LXT {err:.2e} > {PARITY}"


def test_lxt_fixture_parity():
    graph = fastlrp.Graph.load(lxt_vit.GRAPH)
    with np.load(lxt_vit.RELEVANCE) as f:
        res = {k: f[k] for k in f.files}
    assert str(res["lxt_version"]) == "2.1"
    _check(graph, res)
    # the float32 backends against the same numbers (the GPU engine on its emulator: the
    # class token is a batch-1 constant concatenated with the patches)
    backends = ["cpu" if fastlrp._ext.core is not None else "numba"] + (["cuda-emu"] if cuda_emu else [])
    for be in backends:
        for rs in lxt_vit.RULE_SETS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the emulator's host-fallback notes
                got = fastlrp.Explainer(graph, lxt_vit.fastlrp_composite(rs), backend=be).explain(
                    res["x"].astype(np.float32), target=res["target"])
            assert rel_err(got, res[rs]) < RTOL_NET, (be, rs)


def test_lxt_live_parity(tmp_path):
    for mod in ("lxt", "transformers", "torchvision", "zennit"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (LXT: pip install --no-deps lxt==2.1, then transformers==4.52.4 "
                        "with its dependencies, torch pinned)")
    from _zoo import import_torchvision

    torch = pytest.importorskip("torch")
    m, x = lxt_vit.build_vit(import_torchvision(), torch)
    graph = fastlrp.from_torch(m, x)
    _check(graph, lxt_vit.run_lxt(str(tmp_path)))


def test_torchvision_vit_imports_and_explains():
    from _zoo import import_torchvision

    torch = pytest.importorskip("torch")
    tv = import_torchvision()
    m, x = lxt_vit.build_vit(tv, torch)
    m = m.float()
    x = x.float()
    with torch.no_grad():
        y = m(x).numpy()
    graph = fastlrp.from_torch(m, x)
    assert {"matmul", "softmax", "layernorm", "concat", "const"} <= {n.op for n in graph}
    be = "cpu" if fastlrp._ext.core is not None else "numba"
    for comp in ("cp_lrp", "attnlrp(gamma=0.25)"):
        ref = fastlrp.Explainer(graph, comp, backend="reference")
        assert rel_err(ref.forward(x.double().numpy()), y) < 1e-5
        want = ref.explain(x.double().numpy())
        got = fastlrp.Explainer(graph, comp, backend=be).explain(x.numpy())
        assert np.isfinite(got).all() and rel_err(got, want) < RTOL_NET


def test_small_maxvit_imports_and_explains():
    """torchvision's MaxViT (MBConv with squeeze-excitation, block and grid attention with a
    relative position bias), a small configuration (maxvit_t itself needs 224 x 224 inputs,
    slow here; tests/test_zoo.py has vit_b_16 and timm's ViTs)."""
    from _zoo import import_torchvision, randomize_torch_batchnorm

    torch = pytest.importorskip("torch")
    tv = import_torchvision()
    torch.manual_seed(0)
    m = tv.models.maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                                block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5)
    m = randomize_torch_batchnorm(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x).numpy()
    graph = fastlrp.from_torch(m, x)
    ref = fastlrp.Explainer(graph, "attnlrp", backend="reference")
    assert rel_err(ref.forward(x.double().numpy()), y) < 1e-5
    want = ref.explain(x.double().numpy())
    be = "cpu" if fastlrp._ext.core is not None else "numba"
    got = fastlrp.Explainer(graph, "attnlrp", backend=be).explain(x.numpy())
    assert np.isfinite(got).all() and rel_err(got, want) < 1e-3
