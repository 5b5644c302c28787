"""Activation kinds: the float64 reference against the frameworks' own functions,
non-negativity, attribute checks, and the importer entries (torch.fx, torch.export,
Keras) of the hard activations (ReLU6, Hardtanh, clamp, Hardswish, Hardsigmoid,
Keras ReLU with max_value / threshold / negative_slope). Backends against the
reference: test_backend_matrix.py."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder, GraphError
from fastlrp.ops.elementwise import ACTIVATIONS, activation_function

X = np.concatenate([np.linspace(-8, 8, 161), [0.0, -0.0, 3.0, -3.0, 6.0, 1e-7, -1e-7]])

# kind, attrs, torch function (x, torch) -> y
TORCH_EQUIV = [
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, lambda t, x: t.nn.functional.relu6(x)),
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}, lambda t, x: t.nn.functional.hardtanh(x, -2.0, 0.5)),
    ("hardtanh", {"min_val": -np.inf, "max_val": 1.5}, lambda t, x: t.clamp(x, max=1.5)),
    ("hardswish", {}, lambda t, x: t.nn.functional.hardswish(x)),
    ("hardsigmoid", {}, lambda t, x: t.nn.functional.hardsigmoid(x)),
    ("relu", {}, lambda t, x: t.relu(x)),
    ("gelu", {}, lambda t, x: t.nn.functional.gelu(x)),
    ("silu", {}, lambda t, x: t.nn.functional.silu(x)),
    ("elu", {"alpha": 0.7}, lambda t, x: t.nn.functional.elu(x, 0.7)),
    ("leaky_relu", {"negative_slope": 0.1}, lambda t, x: t.nn.functional.leaky_relu(x, 0.1)),
    ("softplus", {}, lambda t, x: t.nn.functional.softplus(x)),
    ("log_softmax", {}, lambda t, x: t.log_softmax(x, dim=-1)),
]


@pytest.mark.parametrize("kind,attrs,fn", TORCH_EQUIV, ids=[f"{k}{a}" for k, a, _ in TORCH_EQUIV])
def test_reference_matches_torch(kind, attrs, fn):
    torch = pytest.importorskip("torch")
    want = fn(torch, torch.tensor(X[None], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(activation_function(kind)(X[None], attrs), want, rtol=1e-12, atol=1e-12)


def test_clipped_relu_matches_keras_definition():
    a = {"max_value": 2.0, "threshold": -1.0, "negative_slope": 0.5}
    want = np.where(X >= 2.0, 2.0, np.where(X >= -1.0, X, 0.5 * (X + 1.0)))
    np.testing.assert_array_equal(activation_function("clipped_relu")(X, a), want)


@pytest.mark.parametrize("kind,attrs,nonneg", [
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, True),
    ("hardtanh", {"min_val": -1.0, "max_val": 1.0}, False),
    ("hardsigmoid", {}, True),
    ("hardswish", {}, False),
    ("clipped_relu", {"max_value": 6.0, "threshold": 0.5, "negative_slope": 0.0}, True),
    ("clipped_relu", {"max_value": None, "threshold": 0.0, "negative_slope": 0.1}, False),
    ("clipped_relu", {"max_value": None, "threshold": -0.5, "negative_slope": 0.0}, False),
])
def test_nonnegativity_follows_the_attributes(kind, attrs, nonneg):
    gb = GraphBuilder((5,))
    h = gb.activation(gb.input, kind, **attrs)
    g = gb.build()
    assert g.known_nonnegative(h) is nonneg
    if nonneg:  # the claim the kernels rely on holds on every input
        assert (activation_function(kind)(X, attrs) >= 0).all()


def test_every_kind_keeps_float32():
    x = X.astype(np.float32)[None]
    for kind in ACTIVATIONS:
        assert activation_function(kind)(x, {}).dtype == np.float32, kind


@pytest.mark.parametrize("attrs,match", [
    ({"kind": "hardtanh", "min_val": 2.0, "max_val": 1.0}, "min_val <= max_val"),
    ({"kind": "clipped_relu", "max_value": -1.0, "threshold": 0.0}, "max_value >= threshold"),
    ({"kind": "hard_tanh"}, "unknown activation"),
])
def test_bad_attributes_name_the_node(attrs, match):
    gb = GraphBuilder((3,))
    gb.add_node("activation", gb.input, attrs, name="act7")
    with pytest.raises(GraphError, match=f"act7.*{match}"):
        gb.build()


# ------------------------------------------------------------------------------------------
# importers
# ------------------------------------------------------------------------------------------
def _torch_hard_model():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Hard(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
            self.acts = nn.ModuleList([nn.ReLU6(), nn.Hardswish(), nn.Hardsigmoid(), nn.Hardtanh(-0.5, 2.0)])
            self.fc = nn.Linear(6 * 8 * 8, 4)

        def forward(self, x):
            h = self.acts[0](self.c1(x))
            h = self.acts[1](self.c2(h))
            h = F.relu6(h) + F.hardswish(h)
            h = F.hardsigmoid(h) + h.clamp(min=-0.25, max=3.0) + torch.clamp(h, max=1.0)
            h = self.acts[3](F.hardtanh(h, -1.0, 4.0))
            return self.fc(self.acts[2](h).flatten(1))

    torch.manual_seed(3)
    return torch, Hard().eval()


def test_torch_hard_activations_import():
    torch, m = _torch_hard_model()
    x = torch.randn(2, 3, 8, 8) * 3
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        kinds = {n.attrs["kind"] for n in g if n.op == "activation"}
        assert {"hardtanh", "hardswish", "hardsigmoid"} <= kinds
        got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x.numpy().astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_keras_hard_activations_import(keras):
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", activation="relu6")(inp)
    h = L.ReLU(max_value=6.0)(L.Conv2D(6, 1, activation="hard_silu")(h))
    h = L.ReLU(max_value=2.0, threshold=0.5, negative_slope=0.3)(h)
    h = L.Activation("hard_sigmoid")(L.ReLU(negative_slope=0.2)(h))
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(h)))
    g = fastlrp.from_keras(model)
    kinds = [n.attrs["kind"] for n in g if n.op == "activation"]
    assert kinds.count("hardtanh") == 2 and {"hardswish", "clipped_relu", "leaky_relu", "hardsigmoid"} <= set(kinds)
    x = (np.random.default_rng(4).standard_normal((2, 8, 8, 3)) * 3).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    want = model(x, training=False).detach().cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
