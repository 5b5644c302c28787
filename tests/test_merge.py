"""``add`` with broadcasting, ``mul`` (Gate / Uniform rules) and ``const`` operands:
the float64 reference against the definitions, gate detection, conservation, the
constant passes, and the importer entries (torch.fx, torch.export, Keras: SE
blocks, ``x * c``, Rescaling / Normalization). Backends against the reference:
test_backend_matrix.py."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")


import numpy as np
import pytest

import fastlrp
from fastlrp import passes
from fastlrp.graph import GraphBuilder, GraphError
from fastlrp.ops.merge import gate_operand
from fastlrp.rules import Epsilon, Gate, RuleError, Uniform


def _signed(rng, shape):
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _se_graph(rng, gate_kind="sigmoid"):
    """conv -> relu -> [global pool -> conv -> relu -> conv -> gate] * -> flatten -> dense."""
    gb = GraphBuilder((3, 5, 5))
    h = gb.activation(gb.conv(gb.input, _signed(rng, (4, 3, 3, 3)), _signed(rng, 4), padding=1, name="c"), "relu")
    s = gb.adaptive_avgpool(h, 1)
    s = gb.activation(gb.conv(s, _signed(rng, (2, 4, 1, 1)), None), "relu")
    s = gb.activation(gb.conv(s, _signed(rng, (4, 2, 1, 1)), None), gate_kind)
    y = gb.add_node("mul", [h, s], name="se")
    gb.dense(gb.flatten(y), _signed(rng, (3, 100)), None, name="fc")
    return gb.build()


def test_gate_detection():
    rng = np.random.default_rng(0)
    g = _se_graph(rng)
    assert gate_operand(g, g["se"]) == 1  # a sigmoid output, broadcast per channel
    assert fastlrp.get_composite("epsilon_plus").resolve(g)["se"] == Gate(1)
    gb = GraphBuilder((6,))
    a, b = gb.activation(gb.input, "tanh"), gb.activation(gb.input, "relu")
    c = gb.add_node("const", [], params={"value": np.full(6, 0.5)})
    ab, ac = gb.add_node("mul", [a, b], name="ab"), gb.add_node("mul", [c, a], name="ca")
    s1, s2 = gb.activation(a, "sigmoid"), gb.activation(b, "hardsigmoid")
    ss = gb.add_node("mul", [s1, s2], name="ss")
    g = gb.build(output=gb.add(gb.add(ab, ac), ss))
    rules = fastlrp.Composite({}).resolve(g)
    assert gate_operand(g, g["ab"]) is None and rules["ab"] == Uniform()  # no gate: the uniform rule
    assert rules["ca"] == Gate(0)  # the constant
    assert rules["ss"] == Uniform()  # two sigmoid outputs of one shape: undecided
    with pytest.raises(RuleError, match="'ab'.*cannot tell which operand"):
        fastlrp.Explainer(g, fastlrp.Composite({}, names={"ab": Gate()}), backend="reference")


@pytest.mark.parametrize("comp", ["epsilon_plus", "excitation_backprop"])
def test_gate_sends_all_relevance_through_the_gated_operand_and_conserves(comp):
    rng = np.random.default_rng(1)
    g = _se_graph(rng)
    for n in g:
        n.params.pop("bias", None)
    g = fastlrp.Graph(g.nodes, output=g.output)
    x = _signed(rng, (4, 3, 5, 5))
    R, rep = fastlrp.Explainer(g, comp, backend="reference").explain(x, target=0, return_layers=True)
    np.testing.assert_allclose(rep.relevance_in["se"], rep.relevance_out["se"], rtol=1e-12)
    # the gate branch gets none: nothing reaches the squeeze path's layers
    assert np.all(rep.relevance_out["conv_1"] == 0)
    np.testing.assert_allclose(R.reshape(4, -1).sum(1), rep.explained, rtol=1e-4)


def test_uniform_and_broadcast_relevance_sum_over_the_broadcast_axes():
    rng = np.random.default_rng(2)
    gb = GraphBuilder((3, 4))
    a = gb.activation(gb.input, "tanh")
    b = gb.adaptive_avgpool(gb.input, 1, dims=1)  # (3, 1)
    y = gb.add_node("mul", [a, b], name="m")
    g = gb.build(output=gb.flatten(y))
    x = _signed(rng, (2, 3, 4))
    seed = _signed(rng, (2, 12))
    ex = fastlrp.Explainer(g, fastlrp.Composite({}, names={"m": Uniform()}), backend="reference")
    _, rep = ex.explain(x, target=seed, return_layers=True)
    np.testing.assert_allclose(rep.relevance_in["m"], seed.sum(1), rtol=1e-12)  # R/2 to each, nothing lost
    # the broadcast operand b got the sum over its broadcast axis of R/2: the pool passes it on
    np.testing.assert_allclose(rep.relevance_out[b], seed.sum(1) / 2, rtol=1e-12)


def test_add_broadcasts_a_constant_and_the_constant_absorbs_its_share():
    rng = np.random.default_rng(3)
    gb = GraphBuilder((2, 3))
    pos = gb.add_node("const", [], params={"value": _signed(rng, (2, 3))}, name="pos")
    bias = gb.add_node("const", [], params={"value": _signed(rng, (3,))}, name="bias")
    y = gb.add(gb.input, pos, bias, name="sum")
    g = gb.build(output=gb.flatten(y))
    x = _signed(rng, (4, 2, 3))
    ex = fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference")
    want = x + g["pos"].params["value"] + g["bias"].params["value"]
    np.testing.assert_allclose(ex.forward(x), want.reshape(4, -1), rtol=1e-15)
    seed = _signed(rng, (4, 6))
    R, rep = ex.explain(x, target=seed, return_layers=True)
    s = want + np.where(want >= 0, 1e-6, -1e-6)
    np.testing.assert_allclose(R, x * seed.reshape(4, 2, 3) / s, rtol=1e-12)  # Norm: each summand's share
    # the constants take their shares and absorb them (like biases)
    shares = rep.relevance_out["pos"] + rep.relevance_out["bias"]
    np.testing.assert_allclose(rep.relevance_in["sum"], R.reshape(4, -1).sum(1) + shares, rtol=1e-12)
    np.testing.assert_allclose(rep.absorbed("pos"), rep.relevance_out["pos"], rtol=1e-12)
    assert np.all(rep.relevance_in["pos"] == 0)


def test_broadcast_errors_name_the_node():
    gb = GraphBuilder((2, 3))
    c = gb.add_node("const", [], params={"value": np.ones((4,))})
    gb.add_node("mul", [gb.input, c], name="bad")
    with pytest.raises(GraphError, match="'bad'.*different shapes"):
        gb.build()
    gb = GraphBuilder((2,))
    gb.add_node("const", [], params={"value": np.array([1.0, np.nan])}, name="c")
    with pytest.raises(GraphError, match="'c'.*NaN"):
        gb.build()


def test_constant_factors_fold_into_the_layer_before():
    rng = np.random.default_rng(4)
    gb = GraphBuilder((3, 6, 6))
    h = gb.conv(gb.input, _signed(rng, (5, 3, 3, 3)), _signed(rng, 5), name="c")
    scale = gb.add_node("const", [], params={"value": _signed(rng, (5, 1, 1))})
    h = gb.add_node("mul", [h, scale], name="layer_scale")
    off = gb.add_node("const", [], params={"value": np.array(0.25)})
    h = gb.add_node("add", [h, off], name="shift")
    h = gb.activation(h, "relu")
    g0 = gb.build(output=gb.flatten(h))
    g = passes.optimize(g0)
    assert [n.op for n in g] == ["input", "conv", "activation", "reshape"] and g["c"].shape == (5, 4, 4)
    x = _signed(rng, (2, 3, 6, 6))
    ref = fastlrp.Explainer(g0, fastlrp.Composite({"conv": Epsilon()}), backend="reference").forward(x)
    np.testing.assert_allclose(fastlrp.Explainer(g, fastlrp.Composite({"conv": Epsilon()}), backend="reference")
                               .forward(x), ref, rtol=1e-12)


def test_fold_constants_computes_constant_subgraphs_once():
    gb = GraphBuilder((3,))
    a = gb.add_node("const", [], params={"value": np.array([1.0, 2.0, 3.0])})
    b = gb.add_node("const", [], params={"value": np.array(2.0)})
    ab = gb.add_node("mul", [a, b], name="ab")
    y = gb.add(gb.input, ab)
    g = passes.fold_constants(gb.build(output=y))
    assert g["ab"].op == "const" and not g["ab"].inputs
    np.testing.assert_array_equal(g["ab"].params["value"], [2.0, 4.0, 6.0])
    assert [n.op for n in g] == ["input", "const", "add"]


# ------------------------------------------------------------------------------------------
# importers
# ------------------------------------------------------------------------------------------
def _torch_se():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
            self.ls = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.c(x))
            g = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
            h = h * g
            h = (h - 0.5) / 2.0 * self.ls + h
            h = -h + 1
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(5)
    return torch, SE().eval()


def test_torch_squeeze_excitation_and_constants_import():
    torch, m = _torch_se()
    x = torch.randn(2, 3, 6, 6)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        ops = [n.op for n in g]
        assert ops.count("mul") == 1 and "const" not in ops  # the constants became per-channel affine maps
        ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
        np.testing.assert_allclose(ex.forward(x.numpy().astype(np.float64)), want, rtol=1e-5, atol=1e-6)
        assert ex.rules["mul"].kind == "gate"


def test_torch_division_by_a_tensor_is_refused_with_the_call_named():
    torch = pytest.importorskip("torch")

    class Div(torch.nn.Module):
        def forward(self, x):
            return (x / (x * x + 1)).flatten(1)

    with pytest.raises(fastlrp.UnsupportedLayerError, match="truediv.*division by a tensor"):
        fastlrp.from_torch(Div(), torch.randn(2, 3))


def test_keras_se_rescaling_normalization_and_constant_arithmetic(keras):
    L = keras.layers
    inp = keras.Input((6, 6, 3))
    h = L.Rescaling(1 / 255.0, offset=-1)(inp)
    h = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[1.0, 4.0, 9.0])(h)
    h = L.Conv2D(8, 3, activation="relu", padding="same")(L.ZeroPadding2D(1)(h))
    s = L.GlobalAveragePooling2D(keepdims=True)(h)
    s = L.Conv2D(8, 1, activation="sigmoid")(L.Conv2D(2, 1, activation="relu")(s))
    h = L.Multiply(name="se")([h, s])
    h = 1.0 - (h * 2.0 + 3.0) / 4.0
    h = L.Subtract()([h, -h])
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(h)))
    g = fastlrp.from_keras(model)
    x = np.random.default_rng(6).uniform(0, 255, (2, 6, 6, 3)).astype(np.float32)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    want = model(x, training=False).detach().cpu().numpy()
    np.testing.assert_allclose(ex.forward(x), want, rtol=1e-5, atol=1e-5)
    assert ex.rules["se"] == Gate(1)
    # Rescaling and Normalization before a padded conv stay one affine node; relevance is
    # returned for the raw input
    R = ex.explain(x)
    assert R.shape == x.shape and np.isfinite(R).all() and np.abs(R).sum() > 0
