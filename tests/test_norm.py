"""``layernorm`` (LayerNorm, LayerNorm2d, RMSNorm): the float64 reference against
torch's layers and against the rule's definition written as a dense matrix (the
std held constant, epsilon on the centred linear map), conservation, checks, and
the importer entries (torch.fx, torch.export, Keras LayerNormalization).
Backends against the reference: test_backend_matrix.py."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import warnings

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder, GraphError
from fastlrp.rules import Epsilon, Pass


def _signed(rng, shape):
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _ln_graph(in_shape, axes, weight=None, bias=None, rms=False, eps=1e-5):
    gb = GraphBuilder(in_shape)
    params = {k: v for k, v in (("weight", weight), ("bias", bias)) if v is not None}
    h = gb.add_node("layernorm", gb.input, {"axes": axes, "eps": eps, "rms": rms}, params, name="ln")
    gb.flatten(h)
    return gb.build()


def _by_definition(x, axes, w, b, rms, eps, R, rule_eps, zero_bias):
    """One sample at a time: J = diag(w / std) (I - 11^T / n) on the normalised axes as a
    dense matrix over the whole sample, z = J x + b, R_x = x * J^T (R / s(z))."""
    out = np.empty_like(x)
    n_ax = tuple(1 + a for a in axes)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        c = xi if rms else xi - xi.mean(axis=n_ax, keepdims=True)
        std = np.sqrt((c * c).mean(axis=n_ax, keepdims=True) + eps)
        size = xi.size
        # the centring as a matrix: P = I - (same group) / n, a group being the entries that
        # agree on every axis not normalised
        coords = np.indices(xi.shape[1:]).reshape(xi.ndim - 1, -1)
        same = np.ones((size, size), dtype=bool)
        for k in range(xi.ndim - 1):
            if k not in axes:
                same &= coords[k][:, None] == coords[k][None, :]
        n = np.prod([xi.shape[a] for a in n_ax])
        P = np.eye(size) if rms else np.eye(size) - same / n
        scale = np.broadcast_to((1.0 if w is None else w[None]) / std, xi.shape).reshape(-1)
        J = scale[:, None] * P
        bias = 0.0 if (b is None or zero_bias) else np.broadcast_to(b[None], xi.shape).reshape(-1)
        z = J @ xi.reshape(-1) + bias
        s = z + np.where(z >= 0, rule_eps, -rule_eps)
        out[i] = (xi.reshape(-1) * (J.T @ (R[i].reshape(-1) / s))).reshape(xi.shape[1:])
    return out


CASES = [
    ("tokens", (4, 6), (1,), True, True, False),
    ("channels-first", (3, 4, 5), (0,), True, False, False),
    ("two-axes", (3, 4, 5), (1, 2), False, True, False),
    ("rms", (4, 6), (1,), True, False, True),
]


@pytest.mark.parametrize("rule", [Epsilon(1e-6), Epsilon(0.05, zero_bias=True)], ids=str)
@pytest.mark.parametrize("cid,in_shape,axes,with_w,with_b,rms", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_the_definition(cid, in_shape, axes, with_w, with_b, rms, rule):
    rng = np.random.default_rng(len(cid))
    bshape = tuple(s if i in axes else 1 for i, s in enumerate(in_shape))
    w = _signed(rng, bshape) if with_w else None
    b = _signed(rng, bshape) if with_b else None
    g = _ln_graph(in_shape, axes, w, b, rms)
    x = _signed(rng, (3,) + in_shape)
    R = _signed(rng, (3,) + in_shape)
    ex = fastlrp.Explainer(g, fastlrp.Composite({}, names={"ln": rule}), backend="reference")
    got = ex.explain(x, target=R.reshape(3, -1))
    want = _by_definition(x, axes, w, b, rms, 1e-5, R, rule.epsilon, rule.zero_bias)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rms", [False, True])
def test_conserves_without_bias_and_pass_routes(rms):
    rng = np.random.default_rng(7)
    g = _ln_graph((5, 8), (1,), _signed(rng, (1, 8)), None, rms)
    x = _signed(rng, (4, 5, 8))
    ex = fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference")
    assert ex.rules["ln"] == Epsilon(1e-6)  # the default
    out = ex.forward(x)
    R = ex.explain(x, target=out)  # explain the whole output
    # each of the 40 outputs gives up at most eps = 1e-6 of its relevance to the stabilizer
    np.testing.assert_allclose(R.reshape(4, -1).sum(1), out.sum(1), rtol=0, atol=40 * 1e-6)
    seed = _signed(rng, (4, 40))
    Rp = fastlrp.Explainer(g, fastlrp.Composite({}, names={"ln": Pass()}), backend="reference").explain(x, target=seed)
    np.testing.assert_array_equal(Rp.reshape(4, -1), seed)


def test_bad_layernorm_names_the_node():
    gb = GraphBuilder((3, 4))
    gb.add_node("layernorm", gb.input, {"axes": (1,), "eps": 1e-5}, {"weight": np.ones(4)}, name="norm1")
    with pytest.raises(GraphError, match="'norm1'.*weight of shape"):
        gb.build()
    gb = GraphBuilder((3, 4))
    gb.add_node("layernorm", gb.input, {"axes": (1, -1), "eps": 1e-5}, name="norm2")
    with pytest.raises(GraphError, match="'norm2'.*distinct axes"):
        gb.build()


# ------------------------------------------------------------------------------------------
# importers
# ------------------------------------------------------------------------------------------
def _torch_model():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class LayerNorm2d(nn.LayerNorm):  # ConvNeXt's: channels-last layer norm around a permute
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                self.eps).permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.ln2d = LayerNorm2d(8)
            self.fc = nn.Linear(8 * 4 * 4, 6)
            self.ln = nn.LayerNorm(6)
            self.rms = nn.RMSNorm(6)
            self.w = nn.Parameter(torch.randn(5, 6))

        def forward(self, x):
            h = self.ln2d(self.conv(x)).flatten(1)
            return F.linear(self.rms(self.ln(self.fc(h))), self.w)

    torch.manual_seed(8)
    m = Net().eval()
    with torch.no_grad():
        for mod in (m.ln2d, m.ln, m.rms):
            mod.weight.normal_()
        m.ln.bias.normal_()
    return torch, m


def test_torch_layer_norms_import():
    torch, m = _torch_model()
    x = torch.randn(2, 3, 6, 6)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        assert [n.op for n in g].count("layernorm") == 3
        assert any(n.attrs.get("rms") for n in g if n.op == "layernorm")
        ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
        np.testing.assert_allclose(ex.forward(x.numpy().astype(np.float64)), want, rtol=1e-5, atol=1e-6)
        R = ex.explain(x.numpy().astype(np.float64))
        assert R.shape == tuple(x.shape) and np.isfinite(R).all()


@pytest.mark.parametrize("axis", [-1, [1, 2, 3], [2, 3]], ids=str)
def test_keras_layer_normalization(axis, keras):
    L = keras.layers
    inp = keras.Input((5, 4, 6))
    ln = L.LayerNormalization(axis=axis, epsilon=1e-5, name="ln")
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(ln(L.Conv2D(6, 1)(inp)))))
    rng = np.random.default_rng(9)
    for w in ln.weights:
        w.assign(rng.standard_normal(w.shape))
    g = fastlrp.from_keras(model)
    x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, model(x, training=False).detach().cpu().numpy(), rtol=1e-5, atol=1e-5)


def test_keras_rms_scaling_is_refused_with_the_layer_named(keras):
    inp = keras.Input((6,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras deprecates rms_scaling itself
        model = keras.Model(inp, keras.layers.LayerNormalization(rms_scaling=True, name="rn")(inp))
    with pytest.raises(fastlrp.UnsupportedLayerError, match="'rn'.*rms_scaling"):
        fastlrp.from_keras(model)


def test_keras_rms_normalization(keras):
    inp = keras.Input((4, 6))
    rn = keras.layers.RMSNormalization(epsilon=1e-5)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(rn(inp))))
    rn.scale.assign(np.random.default_rng(10).standard_normal(rn.scale.shape))
    g = fastlrp.from_keras(model)
    assert [n.attrs.get("rms") for n in g if n.op == "layernorm"] == [True]
    x = np.random.default_rng(11).standard_normal((2, 4, 6)).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, model(x, training=False).detach().cpu().numpy(), rtol=1e-5, atol=1e-5)
