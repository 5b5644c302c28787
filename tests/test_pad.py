"""The ``pad`` op (constant padding and cropping): its float64 reference, its
checks, and its importer entries (torch.fx, torch.export, Keras) against the
frameworks' own outputs. Backends against the reference: test_backend_matrix.py;
parity with zennit: test_zennit_parity.py (padded_cnn)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import Graph, GraphBuilder, GraphError
from fastlrp.rules import Epsilon


def _keras_out(model, x):
    return model(x, training=False).detach().cpu().numpy()


def _pad_graph(in_shape, padding, value=0.0):
    gb = GraphBuilder(in_shape)
    h = gb.add_node("pad", gb.input, {"padding": padding, "value": value}, name="pad")
    gb.flatten(h)
    return gb.build()


def _numpy_pad(x, padding, value):
    """Independent formulation: crop by slicing first, then np.pad the positive amounts."""
    sl = tuple(slice(-b if b < 0 else 0, x.shape[1 + i] + a if a < 0 else None) for i, (b, a) in enumerate(padding))
    x = x[(slice(None),) + sl]
    return np.pad(x, ((0, 0),) + tuple((max(b, 0), max(a, 0)) for b, a in padding), constant_values=value)


CASES = [
    ((3, 5, 6), ((0, 0), (1, 2), (3, 0)), 0.0),
    ((3, 5, 6), ((0, 0), (-1, 2), (0, -3)), 0.0),
    ((2, 7), ((1, -1), (-2, -2)), 0.5),
    ((4,), ((2, 3),), -1.5),
]


@pytest.mark.parametrize("in_shape,padding,value", CASES)
def test_reference_forward_and_relevance(in_shape, padding, value):
    rng = np.random.default_rng([len(in_shape)] + [abs(v) for p in padding for v in p])
    g = _pad_graph(in_shape, padding, value)
    x = rng.uniform(0.5, 2.0, (3,) + in_shape) * rng.choice([-1.0, 1.0], (3,) + in_shape)
    ex = fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference")
    want = _numpy_pad(x, padding, value)
    assert g["pad"].shape == want.shape[1:]
    np.testing.assert_array_equal(ex.forward(x), want.reshape(3, -1))
    # relevance is routed back position by position: what lands on padding is absorbed,
    # cropped inputs get none
    seed = rng.uniform(0.5, 2.0, want.shape).reshape(3, -1)
    R, report = ex.explain(x, target=seed, return_layers=True)
    kept_mask = _numpy_pad(np.ones_like(x), padding, 0.0).reshape(3, -1)
    back = np.zeros_like(x)
    back_view = _numpy_pad(np.arange(x[0].size, dtype=float).reshape(in_shape)[None] + 1, padding, 0.0).reshape(-1)
    for j, src in enumerate(back_view):
        if src > 0:
            back.reshape(3, -1)[:, int(src) - 1] += seed[:, j]
    np.testing.assert_allclose(R, back, rtol=0, atol=1e-15)
    np.testing.assert_allclose(report.absorbed("pad"), (seed * (1 - kept_mask)).sum(axis=1), rtol=1e-12)


def test_nonnegative_propagation():
    gb = GraphBuilder((2, 4))
    r = gb.activation(gb.input, "relu")
    p0 = gb.add_node("pad", r, {"padding": ((0, 0), (1, 1)), "value": 0.0})
    p1 = gb.add_node("pad", r, {"padding": ((0, 0), (1, 1)), "value": -0.5})
    g = gb.build(output=gb.add(p0, p1))
    assert g.known_nonnegative(p0) and not g.known_nonnegative(p1)


@pytest.mark.parametrize("padding,match", [
    (((1, 1),), "1 pairs for an input with 2 axes"),
    (((0, 0), (-3, -1)), "leaves nothing"),
    (((0, 0), (1,)), "invalid attributes|pairs"),
])
def test_bad_padding_names_the_node(padding, match):
    gb = GraphBuilder((3, 4))
    gb.add_node("pad", gb.input, {"padding": padding}, name="mypad")
    with pytest.raises(GraphError, match="mypad") as e:
        gb.build()
    assert e.match(match)


def test_pad_rule_and_save_load(tmp_path):
    g = _pad_graph((2, 3, 3), ((0, 0), (1, 0), (0, -1)), 0.25)
    with pytest.raises(fastlrp.RuleError, match="pad"):
        fastlrp.Explainer(g, fastlrp.Composite({"pad": Epsilon()}), backend="reference")
    g.save(tmp_path / "g.npz")
    h = Graph.load(tmp_path / "g.npz")
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    ex = fastlrp.Explainer(h, fastlrp.Composite({}), backend="reference")
    np.testing.assert_array_equal(ex.forward(x), fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference").forward(x))
    assert h["pad"].attrs["padding"] == ((0, 0), (1, 0), (0, -1)) and h["pad"].attrs["value"] == 0.25


# ------------------------------------------------------------------------------------------
# importers
# ------------------------------------------------------------------------------------------
def _torch_model():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.zp = nn.ZeroPad2d((1, 2, 0, 1))
            self.conv = nn.Conv2d(3, 4, 3)
            self.cp = nn.ConstantPad1d((2, -1), 0.5)
            self.fc = nn.Linear(4 * 4 * 7, 3)

        def forward(self, x):
            h = self.conv(self.zp(x))
            h = F.pad(h, (0, 0, -1, 1))  # crop one row at the top, one zero row at the bottom
            return self.fc(torch.relu(self.cp(h)).flatten(1))

    torch.manual_seed(0)
    return torch, Padded().eval()


def test_torch_fx_and_export_import_padding():
    torch, m = _torch_model()
    x = torch.randn(2, 3, 5, 5)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        assert [n.op for n in g].count("pad") == 3
        got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x.numpy().astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_torch_unsupported_padding_mode_names_the_call():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Reflect(torch.nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 1), mode="reflect").flatten(1)

    with pytest.raises(GraphError, match=r"pad.*mode='reflect'"):
        fastlrp.from_torch(Reflect(), torch.randn(2, 3, 4))


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_keras_zero_padding_and_cropping_2d(fmt, keras):
    L = keras.layers
    inp = keras.Input((9, 8, 3) if fmt == "channels_last" else (3, 9, 8))
    h = L.ZeroPadding2D(((1, 2), (0, 3)), data_format=fmt)(inp)
    h = L.Conv2D(4, 3, activation="relu", data_format=fmt)(h)
    h = L.Cropping2D(((1, 0), (2, 1)), data_format=fmt)(h)
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(h)))
    g = fastlrp.from_keras(model)
    assert [n.op for n in g].count("pad") == 2
    x = np.random.default_rng(1).standard_normal((2,) + tuple(inp.shape[1:])).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, _keras_out(model, x), rtol=1e-5, atol=1e-5)
    R = fastlrp.Explainer(g, "epsilon_plus", backend="reference").explain(x)
    assert R.shape == x.shape and np.abs(R).sum() > 0


def test_keras_padding_and_cropping_1d(keras):
    L = keras.layers
    inp = keras.Input((10, 3))
    h = L.Conv1D(2, 3)(L.Cropping1D((1, 3))(L.ZeroPadding1D((2, 1))(inp)))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(h)))
    g = fastlrp.from_keras(model)
    x = np.random.default_rng(2).standard_normal((2, 10, 3)).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, _keras_out(model, x), rtol=1e-5, atol=1e-5)
