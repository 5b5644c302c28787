"""``upsample`` (nearest, linear, bilinear): PyTorch's interpolation matrices, the
Norm rule's conservation, and the importer entries (nn.Upsample, F.interpolate,
torch.export's upsample_* ops, Keras UpSampling1D/2D). Backends against the
reference: test_backend_matrix.py."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder, GraphError
from fastlrp.ops.pool import upsample_matrix

torch = pytest.importorskip("torch")
F = torch.nn.functional

INTERP = [
    ("nearest", None, {"scale_factor": 2}, 0.5),
    ("nearest", None, {"size": 7}, None),
    ("nearest", None, {"scale_factor": 1.5}, 1 / 1.5),
    ("linear", False, {"scale_factor": 2}, 0.5),
    ("linear", False, {"size": 7}, None),
    ("linear", False, {"scale_factor": 1.5}, 1 / 1.5),
    ("linear", True, {"size": 9}, None),
    ("linear", True, {"scale_factor": 1.5}, 1 / 1.5),
]


@pytest.mark.parametrize("mode,align,kw,scale", INTERP, ids=[f"{m}-{a}-{k}" for m, a, k, _ in INTERP])
def test_matrix_is_pytorchs_interpolation(mode, align, kw, scale):
    x = torch.randn(1, 1, 5, dtype=torch.float64)
    want = F.interpolate(x, mode=mode, align_corners=align, **kw)[0, 0].numpy()
    S = upsample_matrix(5, want.shape[0], mode, bool(align), scale)
    np.testing.assert_allclose(S @ x[0, 0].numpy(), want, rtol=0, atol=1e-14)
    np.testing.assert_allclose(S.sum(axis=1), 1.0, rtol=0, atol=1e-15)  # interpolation weights sum to one


def test_norm_conserves_on_positive_inputs_and_stays_in_its_channel():
    rng = np.random.default_rng(0)
    gb = GraphBuilder((3, 4, 5))
    h = gb.add_node("upsample", gb.input, {"dims": 2, "size": (8, 11), "mode": "linear", "align_corners": False},
                    name="up")
    g = gb.build(output=gb.flatten(h))
    x = rng.uniform(0.5, 2.0, (2, 3, 4, 5))
    ex = fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference")
    seed = np.zeros((2, 3 * 88))
    seed[:, :88] = rng.uniform(0.5, 1.0, (2, 88))  # relevance on channel 0 only
    R = ex.explain(x, target=seed)
    np.testing.assert_allclose(R.reshape(2, -1).sum(1), seed.sum(1), rtol=1e-5)
    assert np.all(R[:, 1:] == 0)


def test_bad_upsample_names_the_node():
    gb = GraphBuilder((2, 4))
    gb.add_node("upsample", gb.input, {"dims": 1, "size": (8,), "mode": "cubic"}, name="up1")
    with pytest.raises(GraphError, match="'up1'.*mode"):
        gb.build()


class _Up(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear")
        self.near = torch.nn.UpsamplingNearest2d(scale_factor=2)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 8 * 10 + 2 * 7 * 9 + 2 * 6 * 7 + 2 * 16 * 20 + 2 * 10, 3)

    def forward(self, x):
        a = self.up(x)
        b = F.interpolate(x, size=(7, 9), mode="nearest")
        c = F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True)
        d = self.near(self.conv(a))
        e = F.interpolate(x.mean(2), scale_factor=2, mode="linear")
        return self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1), d.flatten(1), e.flatten(1)], 1))


def test_torch_upsampling_imports():
    torch.manual_seed(0)
    m = _Up().eval()
    x = torch.randn(2, 2, 4, 5)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        assert [n.op for n in g].count("upsample") == 5
        ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
        np.testing.assert_allclose(ex.forward(x.numpy().astype(np.float64)), want, rtol=1e-5, atol=1e-6)


def test_torch_unsupported_mode_names_the_call():
    class Cubic(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bicubic").flatten(1)

    with pytest.raises(fastlrp.UnsupportedLayerError, match="interpolate.*bicubic"):
        fastlrp.from_torch(Cubic(), torch.randn(1, 2, 3, 3))


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_keras_upsampling(interp, keras):
    L = keras.layers
    inp = keras.Input((4, 5, 3))
    h = L.Conv2D(2, 3)(L.UpSampling2D((2, 3), interpolation=interp)(inp))
    h2 = L.UpSampling1D(2)(L.Reshape((20, 3))(inp))
    model = keras.Model(inp, L.Concatenate()([L.Flatten()(h), L.Flatten()(h2)]))
    g = fastlrp.from_keras(model)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 3)).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, model(x, training=False).detach().cpu().numpy(), rtol=1e-5, atol=1e-5)
