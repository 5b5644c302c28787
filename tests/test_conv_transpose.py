"""``conv_transpose`` (1-d / 2-d transposed convolution, U-Net decoders): forward
against PyTorch, every parametric rule against the independent dense-matrix
formulation of tests/_oracle.py (the transposed conv as the transpose of its
conv's matrix), and the importer entries (nn.ConvTranspose1d/2d,
F.conv_transpose2d, torch.export, Keras Conv1DTranspose/Conv2DTranspose).
Backends against the reference: test_backend_matrix.py."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder, GraphError
from fastlrp.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus

from _oracle import conv_matrix, rule_on_matrix

torch = pytest.importorskip("torch")

# (in_shape, torch weight (in, out/groups, *k), stride, padding, output_padding, dilation, groups)
CASES = [
    ((4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1, 1),
    ((4, 4, 5), (4, 2, 2, 3), 3, 0, 2, 2, 2),
    ((3, 5, 5), (3, 2, 3, 3), 1, 2, 0, 1, 1),
    ((2, 7), (2, 3, 4), 2, 1, 1, 1, 1),
]

RULES = [
    ("epsilon", Epsilon(1e-3), {"epsilon": 1e-3}),
    ("zplus", ZPlus(), {"stabilizer": 1e-6}),
    ("alphabeta", AlphaBeta(2, 1), {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}),
    ("gamma", Gamma(0.25), {"gamma": 0.25, "stabilizer": 1e-6}),
    ("zbox", ZBox(-2.0, 2.5), {"low": -2.0, "high": 2.5, "stabilizer": 1e-6}),
    ("flat", Flat(), {"stabilizer": 1e-6}),
    ("wsquare", WSquare(), {"stabilizer": 1e-6}),
]


def _module(in_shape, wshape, stride, pad, out_pad, dil, groups):
    cls = torch.nn.ConvTranspose2d if len(in_shape) == 3 else torch.nn.ConvTranspose1d
    torch.manual_seed(sum(wshape))
    return cls(in_shape[0], wshape[1] * groups, wshape[2:], stride=stride, padding=pad, output_padding=out_pad,
               dilation=dil, groups=groups).double().eval()


def _graph(m, in_shape, out_size):
    d = len(in_shape) - 1
    gb = GraphBuilder(in_shape)
    attrs = {"dims": d, "stride": m.stride, "dilation": m.dilation, "groups": m.groups, "output_size": out_size,
             "padding": tuple((p, p + o) for p, o in zip(m.padding, m.output_padding))}
    params = {"weight": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}
    gb.flatten(gb.add_node("conv_transpose", gb.input, attrs, params, name="up"))
    return gb.build()


@pytest.mark.parametrize("kind,rule,params", RULES, ids=[r[0] for r in RULES])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-s{c[2]}-p{c[3]}-op{c[4]}-d{c[5]}-g{c[6]}" for c in CASES])
def test_forward_and_rules_match_the_matrix_formulation(case, kind, rule, params):
    in_shape = case[0]
    m = _module(*case)
    rng = np.random.default_rng(len(kind))
    x = rng.uniform(0.2, 1.5, (2,) + in_shape) * rng.choice([-1.0, 1.0], (2,) + in_shape)
    y = m(torch.tensor(x)).detach().numpy()
    g = _graph(m, in_shape, y.shape[2:])
    ex = fastlrp.Explainer(g, fastlrp.Composite(names={"up": rule}), backend="reference")
    np.testing.assert_allclose(ex.forward(x), y.reshape(2, -1), rtol=1e-12, atol=1e-12)
    # the transposed conv is the transpose of its conv's matrix (rows cropped to the input)
    a = g["up"].attrs
    Mc, maskc, cout = conv_matrix(m.weight.detach().numpy(), y.shape[1:], a["stride"], a["padding"], a["dilation"],
                                  a["groups"])
    keep = np.ravel_multi_index(np.indices(in_shape).reshape(len(in_shape), -1), cout)
    M, mask = Mc[keep].T, maskc[keep].T
    bias = np.repeat(m.bias.detach().numpy(), int(np.prod(y.shape[2:])))
    R = rng.uniform(0.2, 1.5, y.shape) * rng.choice([-1.0, 1.0], y.shape)
    p = dict(params)
    if kind == "zbox":
        p["low"], p["high"] = np.full_like(x.reshape(2, -1), p["low"]), np.full_like(x.reshape(2, -1), p["high"])
    want = rule_on_matrix(kind, M, mask, bias, x.reshape(2, -1), R.reshape(2, -1), **p).reshape(x.shape)
    got = ex.explain(x, target=R.reshape(2, -1))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_composites_map_it_as_a_convolution():
    m = _module(*CASES[0])
    g = _graph(m, CASES[0][0], (10, 12))
    assert fastlrp.get_composite("epsilon_plus").resolve(g)["up"].kind == "zplus"  # zennit's Convolution type


def test_bad_output_size_names_the_node():
    m = _module(*CASES[0])
    with pytest.raises(GraphError, match="'up'.*does not fit"):
        _graph(m, CASES[0][0], (3, 12))


class _UNetUp(torch.nn.Module):
    """A U-Net decoder step: a transposed conv and an upsample, concatenated with the skip."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.down = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.conv = nn.Conv2d(3 + 4 + 6, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)  # a segmentation head: per-pixel class scores

    def forward(self, x):
        h = torch.relu(self.down(x))
        u = torch.relu(self.up(h))
        v = torch.nn.functional.interpolate(h, scale_factor=2, mode="bilinear")
        return self.head(torch.relu(self.conv(torch.cat([x, u, v], 1))))


def test_unet_block_imports_and_explains_a_region():
    torch.manual_seed(2)
    m = _UNetUp().eval()
    x = torch.randn(2, 3, 8, 8)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        assert {"conv_transpose", "upsample"} <= {n.op for n in g}
        ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
        np.testing.assert_allclose(ex.forward(x.numpy().astype(np.float64)), want, rtol=1e-5, atol=1e-6)
        # explain a region: the class-1 score over the top-left 4x4 pixels, as a mask seed
        out = ex.forward(x.numpy().astype(np.float64))
        seed = np.zeros_like(out)
        seed[:, 1, :4, :4] = out[:, 1, :4, :4]
        R = ex.explain(x.numpy().astype(np.float64), target=seed)
        assert R.shape == tuple(x.shape) and np.abs(R).sum() > 0


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_keras_conv_transpose(padding, stride, keras):
    L = keras.layers
    inp = keras.Input((5, 6, 3))
    h = L.Conv2DTranspose(4, 3, strides=stride, padding=padding, activation="relu")(inp)
    h1 = L.Conv1DTranspose(2, 2, strides=stride, padding=padding)(L.Reshape((30, 3))(inp))
    model = keras.Model(inp, L.Concatenate()([L.Flatten()(h), L.Flatten()(h1)]))
    g = fastlrp.from_keras(model)
    x = np.random.default_rng(stride).standard_normal((2, 5, 6, 3)).astype(np.float32)
    got = fastlrp.Explainer(g, "epsilon_plus", backend="reference").forward(x)
    np.testing.assert_allclose(got, model(x, training=False).detach().cpu().numpy(), rtol=1e-5, atol=1e-5)
