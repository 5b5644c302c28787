"""Tests for importing torch.export programs (and TorchScript) with fastlrp.from_torch.

Each model is exported once per module (``torch.export`` takes a while), both as the
training IR ``torch.export.export`` returns and as core ATen after
``run_decompositions()``; the imported graph must compute what torch computes and
give the same relevance as the torch.fx import of the same module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastlrp  # noqa: E402
from fastlrp import cli  # noqa: E402
from fastlrp.dataset import load_store  # noqa: E402
from fastlrp.importers.torch import UnsupportedLayerError, from_torch  # noqa: E402
from _torch_helpers import randomize  # noqa: E402

COMPOSITES = ["epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat",
              "epsilon_gamma_box(low=-3, high=3)"]


# ------------------------------------------------------------------------------------------------
# models


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        identity = self.stem(x)
        out = torch.relu(self.bn1(self.conv1(identity)))
        out = self.conv2(out)
        out = out + identity
        out = torch.relu(out)
        out = torch.cat([out, self.branch(out)], dim=1)
        out = out.mean(dim=(2, 3))
        return self.fc(out)


def _models():
    return {
        "mlp": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8), nn.Tanh(),
                                      nn.Linear(8, 4)), (3, 6)),
        "cnn": (lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.LeakyReLU(0.1), nn.AvgPool2d(2, ceil_mode=True),
            nn.Flatten(), nn.BatchNorm1d(24), nn.Linear(24, 5)), (3, 2, 10, 10)),
        "residual": (Residual, (3, 2, 6, 6)),
        "conv1d": (lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2), nn.AvgPool1d(2),
            nn.Conv1d(4, 6, 2, dilation=2), nn.ReLU(), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(12, 3)),
            (3, 2, 16)),
    }


def _quiet(fn, *a, **kw):
    """Call fn with torch's own deprecation chatter (e.g. pytree FutureWarnings) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def exported():
    """name -> (module, x, ExportedProgram, decomposed ExportedProgram); exported once for the module."""
    out = {}
    for key, (make, shape) in _models().items():
        m = randomize(make(), seed=len(out))
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ep = _quiet(torch.export.export, m, (x,))
        out[key] = (m, x, ep, _quiet(ep.run_decompositions))
    return out


def graph_forward(graph, x):
    return np.asarray(fastlrp.Explainer(graph, "epsilon_plus", backend="reference").forward(np.asarray(x)))


# ------------------------------------------------------------------------------------------------
# equivalence with torch and with the torch.fx import


@pytest.mark.parametrize("decomposed", [False, True], ids=["export", "core_aten"])
@pytest.mark.parametrize("key", ["mlp", "cnn", "residual", "conv1d"])
def test_exported_graph_matches_torch_and_fx_import(exported, key, decomposed):
    m, x, ep, ep_core = exported[key]
    prog = ep_core if decomposed else ep
    g = from_torch(prog)
    g_fx = from_torch(m, x)
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(graph_forward(g, x.numpy()), ref, rtol=1e-9, atol=1e-12)
    # BatchNorms are folded as in the fx import, and layers are named after their modules
    assert not [n for n in g if n.op == "batchnorm"]
    assert [n.name for n in g.parametric()] == [n.name for n in g_fx.parametric()]
    assert g.meta["importer"] == "fastlrp.importers.torch_export"
    xs = x.numpy()
    for comp in COMPOSITES:
        r = fastlrp.Explainer(g, comp, backend="reference").explain(xs)
        r_fx = fastlrp.Explainer(g_fx, comp, backend="reference").explain(xs)
        np.testing.assert_allclose(r, r_fx, rtol=1e-9, atol=1e-12, err_msg=comp)


def test_residual_add_and_concat_nodes(exported):
    g = from_torch(exported["residual"][2])
    ops = [n.op for n in g]
    assert ops.count("add") == 1 and ops.count("concat") == 1 and "adaptive_avgpool" in ops


def test_example_input_without_batch_axis_and_other_batch_size(exported):
    m, x, ep, _ = exported["cnn"]
    ref = from_torch(ep)
    for ex in (x[0], x[:1], x[:1].float()):  # unbatched, another (static) batch size, another dtype
        g = from_torch(ep, ex)
        assert g.input_shape == ref.input_shape
        np.testing.assert_allclose(graph_forward(g, x.numpy()), graph_forward(ref, x.numpy()), rtol=1e-12)


def test_output_softmax_is_stripped():
    m = randomize(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(dim=1)))
    x = torch.randn(2, 5, dtype=torch.float64)
    ep = _quiet(torch.export.export, m, (x,))
    with pytest.warns(UserWarning, match="softmax.*stripped"):
        g = from_torch(ep)
    with torch.no_grad():
        logits = m[:3](x).numpy()
    np.testing.assert_allclose(graph_forward(g, x.numpy()), logits, rtol=1e-9)
    kept = from_torch(ep, keep_output_activation=True)
    assert kept[kept.output].attrs["kind"] == "softmax"


def test_saved_pt2_round_trip(exported, tmp_path):
    m, x, ep, _ = exported["residual"]
    path = tmp_path / "res.pt2"
    _quiet(torch.export.save, ep, str(path))
    loaded = _quiet(torch.export.load, str(path))
    g = from_torch(loaded)
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(graph_forward(g, x.numpy()), ref, rtol=1e-9)
    r = fastlrp.Explainer(g, "epsilon_alpha2_beta1", backend="reference").explain(x.numpy())
    r_fx = fastlrp.Explainer(from_torch(m, x), "epsilon_alpha2_beta1", backend="reference").explain(x.numpy())
    np.testing.assert_allclose(r, r_fx, rtol=1e-9, atol=1e-12)


def test_cli_explain_pt2_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(36, 5)).eval()
    x = np.random.default_rng(0).normal(size=(7, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ep = _quiet(torch.export.export, m, (torch.from_numpy(x[:2]),))  # static batch of 2; data come in 7 rows
    _quiet(torch.export.save, ep, str(tmp_path / "m.pt2"))
    rc = _quiet(cli.main, ["explain", str(tmp_path / "m.pt2"), str(tmp_path / "x.npy"), "-o",
                           str(tmp_path / "o.zarr"), "-q", "--backend", "reference", "-c", "epsilon_plus"])
    assert rc == 0, capsys.readouterr().err
    ref = fastlrp.Explainer(from_torch(m, torch.from_numpy(x[:1])), "epsilon_plus", backend="reference").explain(x)
    np.testing.assert_allclose(load_store(tmp_path / "o.zarr")["relevance"][:], ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# TorchScript


class _Loop(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        i = 0
        while bool(x.abs().max() > 0.1) and i < 3:
            x = self.fc(x) * 0.5
            i += 1
        return x


def test_torchscript_traced_and_scripted(exported, tmp_path):
    m, x, _, _ = exported["cnn"]
    r_fx = fastlrp.Explainer(from_torch(m, x), "epsilon_plus_flat", backend="reference").explain(x.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in recent torch
        torch.jit.trace(m, x).save(str(tmp_path / "t.pt"))
        loaded = [torch.jit.load(str(tmp_path / "t.pt")), torch.jit.script(m)]
    for sm in loaded:
        g = from_torch(sm, x.float())  # the example is cast to the module's dtype
        r = fastlrp.Explainer(g, "epsilon_plus_flat", backend="reference").explain(x.numpy())
        np.testing.assert_allclose(r, r_fx, rtol=1e-9, atol=1e-12)


def test_torchscript_errors():
    x = torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sm = torch.jit.script(_Loop().eval())
    with pytest.raises(UnsupportedLayerError, match=r"TorchScript.*prim::Loop.*torch\.export\.save"):
        from_torch(sm, x)
    with pytest.raises(TypeError, match="example input"):
        from_torch(sm)


# ------------------------------------------------------------------------------------------------
# errors


class _Slice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)[:, [0, 2]]  # advanced indexing (a list): not a slice


class _TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


@pytest.mark.parametrize(
    "model, pattern",
    [
        (_Slice(), r"unsupported ATen op aten\.index\.Tensor at 'index\w*'"),
        (nn.Sequential(nn.Linear(4, 3), nn.Mish()),
         r"unsupported ATen op aten\.mish\.default at 'mish' \(in module '1', Mish\)"),
        (nn.Sequential(nn.Linear(4, 3), nn.SELU()), r"aten\.(elu|selu)\.default"),
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train(), r"aten\.batch_norm\.default.*training=True"),
        (_TwoInputs(), r"2 inputs"),
    ],
    ids=["slice", "mish", "selu", "train_batchnorm", "two_inputs"],
)
def test_unsupported_aten_ops_are_named(model, pattern):
    x = torch.randn(2, 4)
    args = (x, x) if isinstance(model, _TwoInputs) else (x,)
    ep = _quiet(torch.export.export, model, args)
    with pytest.raises(UnsupportedLayerError, match=pattern):
        from_torch(ep)


def test_unused_unsupported_op_is_ignored():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            _ = torch.exp(x)[:, :1]  # computed, never used
            return self.fc(x)

    ep = _quiet(torch.export.export, Dead().eval(), (torch.randn(2, 4),))
    g = from_torch(ep)
    assert [n.op for n in g] == ["input", "dense"]
