"""Keras 3 import: forward parity with Keras, relevance parity with the same model
built in PyTorch, saved files, layouts, iNNvestigate presets and errors.

Keras runs on its torch backend (no TensorFlow needed): ``pip install keras h5py``.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip(f"these tests run Keras on the torch backend, found {keras.backend.backend()}", allow_module_level=True)
torch = pytest.importorskip("torch")

from keras import layers  # noqa: E402

import fastlrp  # noqa: E402
import fastlrp.innvestigate  # noqa: E402,F401  (registers the lrp.* composites)
from fastlrp.composites import EpsilonGammaBox  # noqa: E402
from fastlrp.graph import GraphError  # noqa: E402
from fastlrp.importers.keras import (  # noqa: E402
    UnsupportedLayerError,
    from_engine_layout,
    from_keras,
    to_engine_layout,
)

COMPOSITES = [
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    EpsilonGammaBox(low=-3, high=3),
]
COMPOSITE_IDS = [c if isinstance(c, str) else "epsilon_gamma_box" for c in COMPOSITES]

# Keras and PyTorch compute the forward in float32; the explanations are float64
# from float32 weights, so they agree to float32 rounding of the model.
FWD_TOL = 2e-5


def _np(v):
    v = getattr(v, "value", v)  # a keras.Variable -> its backend tensor
    return np.array(v.detach().cpu().numpy(), dtype=np.float64)


def keras_forward(model, x):
    return _np(model(np.asarray(x, dtype=np.float32), training=False))


def randomize(model, seed=0, scale=0.5):
    """Random weights (biases nonzero, BatchNorm statistics nontrivial)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize(layer, seed + 1, scale)
            continue
        new = []
        for w in layer.weights:
            v = rng.normal(size=tuple(w.shape)) * scale
            if "variance" in w.path:
                v = np.abs(v) + 0.5
            elif "gamma" in w.path:
                v = 1.0 + 0.3 * v
            new.append(v.astype("float32"))
        if new:
            layer.set_weights(new)
    return model


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def close(a, b, rtol=1e-4, atol_rel=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    atol = atol_rel * max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def explainer(graph, composite):
    return fastlrp.Explainer(graph, composite, backend="reference")


# ------------------------------------------------------------------------------------
# the four architectures, each in Keras and in PyTorch with the same weights


def t(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


def copy_dense(tl, kl):
    tl.weight.data = t(_np(kl.kernel).T)
    tl.bias.data = t(_np(kl.bias))


def copy_conv(tl, kl):
    k = _np(kl.kernel)
    d = k.ndim - 2
    tl.weight.data = t(np.transpose(k, (d + 1, d) + tuple(range(d))))
    tl.bias.data = t(_np(kl.bias))


def copy_bn(tl, kl):
    tl.weight.data = t(_np(kl.gamma))
    tl.bias.data = t(_np(kl.beta))
    tl.running_mean.data = t(_np(kl.moving_mean))
    tl.running_var.data = t(_np(kl.moving_variance))
    tl.eps = float(kl.epsilon)


def mlp_pair():
    k = keras.Sequential(
        [
            keras.Input((12,)),
            layers.Dense(16, activation="relu", name="fc1"),
            layers.Dense(10, name="fc2"),
            layers.ReLU(),
            layers.Dropout(0.5),
            layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    randomize(k, 1)
    tm = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10), torch.nn.ReLU(),
        torch.nn.Dropout(0.5), torch.nn.Linear(10, 4),
    )
    copy_dense(tm[0], k.get_layer("fc1"))
    copy_dense(tm[2], k.get_layer("fc2"))
    copy_dense(tm[5], k.get_layer("out"))
    x = np.random.default_rng(11).normal(size=(5, 12))
    return k, tm.eval(), x, x


def cnn_pair():
    k = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            layers.Conv2D(6, 3, padding="same", name="c1"),
            layers.BatchNormalization(name="bn1"),
            layers.Activation("relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(8, 3, activation="relu", name="c2"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            layers.Dense(10, activation="relu", name="fc1"),
            layers.Dense(5, name="out"),
        ]
    )
    randomize(k, 2)
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5),
    )
    copy_conv(tm[0], k.get_layer("c1"))
    copy_bn(tm[1], k.get_layer("bn1"))
    copy_conv(tm[4], k.get_layer("c2"))
    # Keras flattens (H, W, C), PyTorch (C, H, W): permute the dense columns
    W = _np(k.get_layer("fc1").kernel).T.reshape(10, 2, 2, 8)
    tm[8].weight.data = t(np.transpose(W, (0, 3, 1, 2)).reshape(10, 32))
    tm[8].bias.data = t(_np(k.get_layer("fc1").bias))
    copy_dense(tm[10], k.get_layer("out"))
    x = np.random.default_rng(12).normal(size=(3, 12, 12, 3))
    return k, tm.eval(), x, np.moveaxis(x, -1, 1)


def conv1d_pair():
    k = keras.Sequential(
        [
            keras.Input((20, 4)),
            layers.Conv1D(6, 5, activation="relu", name="c1"),
            layers.MaxPooling1D(2),
            layers.Conv1D(8, 3, padding="same", name="c2"),
            layers.ReLU(),
            layers.GlobalAveragePooling1D(),
            layers.Dense(3, name="out"),
        ]
    )
    randomize(k, 3)
    tm = torch.nn.Sequential(
        torch.nn.Conv1d(4, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool1d(2), torch.nn.Conv1d(6, 8, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    )
    copy_conv(tm[0], k.get_layer("c1"))
    copy_conv(tm[3], k.get_layer("c2"))
    copy_dense(tm[7], k.get_layer("out"))
    x = np.random.default_rng(13).normal(size=(4, 20, 4))
    return k, tm.eval(), x, np.moveaxis(x, -1, 1)


class _ResCat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 6, 3)
        self.fc = torch.nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = self.c2(a)
        s = torch.relu(a + b)
        c = torch.cat([s, a], dim=1)
        h = torch.relu(self.c3(c))
        return self.fc(torch.flatten(h, 1))


def functional_pair():
    inp = keras.Input((8, 8, 3), name="image")
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="c2")(a)
    s = layers.Add(name="residual")([a, b])
    s = layers.ReLU(name="relu_s")(s)
    c = layers.Concatenate(name="cat")([s, a])
    h = layers.Conv2D(6, 3, activation="relu", name="c3")(c)
    h = layers.Flatten()(h)
    out = layers.Dense(5, name="fc")(h)
    k = keras.Model(inp, out)
    randomize(k, 4)
    tm = _ResCat()
    copy_conv(tm.c1, k.get_layer("c1"))
    copy_conv(tm.c2, k.get_layer("c2"))
    copy_conv(tm.c3, k.get_layer("c3"))
    W = _np(k.get_layer("fc").kernel).T.reshape(5, 6, 6, 6)
    tm.fc.weight.data = t(np.transpose(W, (0, 3, 1, 2)).reshape(5, -1))
    tm.fc.bias.data = t(_np(k.get_layer("fc").bias))
    x = np.random.default_rng(14).normal(size=(3, 8, 8, 3))
    return k, tm.eval(), x, np.moveaxis(x, -1, 1)


PAIRS = {"mlp": mlp_pair, "cnn": cnn_pair, "conv1d": conv1d_pair, "functional": functional_pair}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request):
    k, tm, xk, xt = PAIRS[request.param]()
    gk = quiet(from_keras, k)
    gt = quiet(fastlrp.from_torch, tm, torch.tensor(xt[:1], dtype=torch.float32))
    return request.param, k, tm, xk, xt, gk, gt


def _to_keras_layout(R):
    return np.moveaxis(R, 1, -1) if R.ndim > 2 else R


def test_forward_matches_keras_and_torch(pair):
    name, k, tm, xk, xt, gk, gt = pair
    ex = explainer(gk, "epsilon_plus")
    yk = quiet(from_keras, k, keep_output_activation=True)
    full = explainer(yk, "epsilon_plus").forward(xk)
    np.testing.assert_allclose(full, keras_forward(k, xk), atol=FWD_TOL, rtol=FWD_TOL)
    with torch.no_grad():
        yt = tm(torch.tensor(xt, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(ex.forward(xk), yt, atol=FWD_TOL, rtol=FWD_TOL)
    np.testing.assert_allclose(ex.forward(xk), explainer(gt, "epsilon_plus").forward(xt), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("composite", COMPOSITES, ids=COMPOSITE_IDS)
def test_relevance_matches_torch(pair, composite):
    name, k, tm, xk, xt, gk, gt = pair
    ek, et = explainer(gk, composite), explainer(gt, composite)
    n_out = gk.output_shape[0]
    target = np.arange(xk.shape[0]) % n_out
    Rk = ek.explain(xk, target=target)
    Rt = et.explain(xt, target=target)
    assert Rk.shape == xk.shape  # channels-last back for channels-last models
    close(Rk, _to_keras_layout(Rt))
    assert np.abs(Rk).sum() > 0


def test_channels_last_relevance_and_layout_helpers(pair):
    name, k, tm, xk, xt, gk, gt = pair
    ex = explainer(gk, "epsilon_plus")
    R = ex.explain(xk, target=0)
    # the same graph told it is channels-first, fed the transposed input
    g2 = fastlrp.Graph(gk.nodes, output=gk.output, meta={**gk.meta, "layout": "channels_first"})
    xe = to_engine_layout(xk, gk)
    Re = explainer(g2, "epsilon_plus").explain(np.ascontiguousarray(xe), target=0)
    np.testing.assert_array_equal(from_engine_layout(Re, gk), R)
    if xk.ndim > 2:
        assert gk.meta["layout"] == "channels_last"
        assert tuple(gk.meta["keras_input_shape"]) == xk.shape[1:]
        np.testing.assert_array_equal(to_engine_layout(xk, gk), np.moveaxis(xk, -1, 1))
        # single samples and torch tensors
        np.testing.assert_array_equal(to_engine_layout(xk[0], gk), np.moveaxis(xk[0], -1, 0))
        tt = torch.tensor(Re)
        assert torch.equal(from_engine_layout(tt, gk), torch.tensor(np.moveaxis(Re, 1, -1)))
    else:
        assert gk.meta["layout"] == "channels_first"
        assert to_engine_layout(xk, gk) is xk


def test_batchnorm_folded(pair):
    name, k, tm, xk, xt, gk, gt = pair
    assert not [n for n in gk.nodes if n.op == "batchnorm"]
    if name == "cnn":
        assert gk.meta["folded_batchnorm"] == ["bn1 (BatchNormalization)"]


# ------------------------------------------------------------------------------------
# saved models


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_saved_model_explains_identically(tmp_path, ext):
    k, _, xk, _ = cnn_pair()
    path = tmp_path / f"model{ext}"
    quiet(k.save, path)
    g0 = quiet(from_keras, k)
    g1 = quiet(from_keras, path)
    g2 = quiet(from_keras, str(path))
    assert g1.fingerprint() == g0.fingerprint() == g2.fingerprint()
    for comp in ("epsilon_plus_flat", EpsilonGammaBox(low=-3, high=3)):
        R0 = explainer(g0, comp).explain(xk, target=1)
        R1 = explainer(g1, comp).explain(xk, target=1)
        np.testing.assert_array_equal(R0, R1)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        from_keras("/nonexistent/model.keras")


# ------------------------------------------------------------------------------------
# the regression case


def test_regression_tanh_single_sample():
    k = keras.Sequential(
        [keras.Input((6,)), layers.Dense(8), layers.Activation("tanh"), layers.Dense(1), layers.Activation("tanh")]
    )
    randomize(k, 5)
    g = from_keras(k)  # a tanh output is not stripped
    assert g.output_shape == (1,) and g[g.output].attrs["kind"] == "tanh"
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(20, 6))
    ys = keras_forward(k, xs)[:, 0]
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1), torch.nn.Tanh())
    copy_dense(tm[0], k.layers[0])
    copy_dense(tm[2], k.layers[2])
    gt = quiet(fastlrp.from_torch, tm.eval(), torch.zeros(1, 6))
    for i in (int(np.argmin(ys)), int(np.argmax(ys))):  # a negative and a positive output
        x = xs[i]
        ex = explainer(g, "epsilon_plus")
        y = ex.forward(x)
        assert y.shape == (1,)
        np.testing.assert_allclose(y, ys[i : i + 1], atol=FWD_TOL)
        R = ex.explain(x)
        assert R.shape == (6,)
        np.testing.assert_allclose(R, ex.explain(x[None])[0])
        close(R, explainer(gt, "epsilon_plus").explain(x))
        # Epsilon with biases absorbs part of the output, but the sign follows it here
        assert np.sign(R.sum()) == np.sign(ys[i]) or abs(R.sum()) < 1e-3


def test_regression_tanh_conserves_without_bias():
    k = keras.Sequential(
        [keras.Input((5,)), layers.Dense(7, use_bias=False, activation="tanh"),
         layers.Dense(1, use_bias=False, activation="tanh")]
    )
    randomize(k, 6)
    x = np.random.default_rng(6).normal(size=5)
    ex = explainer(from_keras(k), "epsilon_plus")
    R = ex.explain(x)
    np.testing.assert_allclose(R.sum(), ex.forward(x)[0], rtol=1e-4)


# ------------------------------------------------------------------------------------
# layer coverage: forward parity with Keras


def _check_forward(model, x, keep=True):
    randomize(model, 7)
    g = quiet(from_keras, model, keep_output_activation=keep)
    ex = explainer(g, "epsilon_plus")
    np.testing.assert_allclose(ex.forward(x), keras_forward(model, x), atol=FWD_TOL, rtol=FWD_TOL)
    R = ex.explain(x, target=0)
    assert R.shape == x.shape and np.isfinite(R).all()
    return g


def _img(shape=(2, 11, 10, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize(
    "conv",
    [
        dict(filters=5, kernel_size=3, padding="same"),
        dict(filters=5, kernel_size=4, padding="same", strides=2),  # asymmetric TF padding
        dict(filters=5, kernel_size=(2, 3), padding="same", strides=(3, 2)),
        dict(filters=6, kernel_size=3, padding="same", dilation_rate=2),
        dict(filters=6, kernel_size=3, padding="valid", dilation_rate=(2, 1)),
        dict(filters=6, kernel_size=3, padding="valid", strides=2),
        dict(filters=6, kernel_size=3, padding="same", groups=2),
        dict(filters=4, kernel_size=1, groups=4, use_bias=False),
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_conv2d_forward(conv):
    m = keras.Sequential([keras.Input((11, 10, 4)), layers.Conv2D(**conv), layers.Flatten(), layers.Dense(3)])
    _check_forward(m, _img())


@pytest.mark.parametrize("kw", [dict(padding="same", strides=2, depth_multiplier=2), dict(padding="valid", dilation_rate=2)])
def test_depthwise_forward(kw):
    m = keras.Sequential(
        [keras.Input((11, 10, 4)), layers.DepthwiseConv2D(3, activation="relu", **kw), layers.GlobalAveragePooling2D(),
         layers.Dense(3)]
    )
    g = _check_forward(m, _img())
    conv = [n for n in g.nodes if n.op == "conv"][0]
    assert conv.attrs["groups"] == 4


def test_separable_forward():
    m = keras.Sequential(
        [keras.Input((11, 10, 4)), layers.SeparableConv2D(6, 3, padding="same", depth_multiplier=2),
         layers.GlobalMaxPooling2D(), layers.Dense(3)]
    )
    _check_forward(m, _img())


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("padding,pool,strides", [("valid", 2, None), ("same", 3, 2), ("same", 2, 1), ("valid", (3, 2), (1, 2))])
def test_pooling2d_forward(kind, padding, pool, strides):
    P = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    m = keras.Sequential(
        [keras.Input((11, 10, 4)), layers.Conv2D(4, 1), P(pool, strides=strides, padding=padding), layers.Flatten(),
         layers.Dense(3)]
    )
    x = _img()
    if kind == "max" or padding == "valid":
        _check_forward(m, x)
        return
    # "same" average pooling: TensorFlow (and JAX) leave the padding out of the average;
    # Keras' torch backend pads asymmetric cases by replicating the edge instead. fastlrp
    # follows TensorFlow, so the expectation is computed by hand here.
    randomize(m, 7)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = from_keras(m)
    h = torch.tensor(_np(m.layers[0](x.astype("float32")))).permute(0, 3, 1, 2)
    k2 = (pool, pool) if isinstance(pool, int) else pool
    s2 = (strides, strides) if isinstance(strides, int) else strides
    from fastlrp.graph import same_padding

    pads = [same_padding(h.shape[2 + i], k2[i], s2[i]) for i in range(2)]
    hp = torch.nn.functional.pad(h, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    ones = torch.nn.functional.pad(torch.ones_like(h[:, :1]), (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    sums = torch.nn.functional.avg_pool2d(hp, k2, s2, divisor_override=1)
    cnt = torch.nn.functional.avg_pool2d(ones, k2, s2, divisor_override=1)
    pooled = (sums / cnt).permute(0, 2, 3, 1).numpy()
    expect = _np(m.layers[-1](m.layers[-2](pooled.astype("float32"))))
    np.testing.assert_allclose(explainer(g, "epsilon_plus").forward(x), expect, atol=FWD_TOL, rtol=FWD_TOL)
    if any(a != b for a, b in pads):
        assert any("replicat" in str(w.message) for w in rec)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pooling1d_forward(kind, padding):
    P = layers.MaxPooling1D if kind == "max" else layers.AveragePooling1D
    m = keras.Sequential([keras.Input((13, 3)), layers.Conv1D(4, 3, padding="causal"), P(3, strides=2, padding=padding),
                          layers.Flatten(), layers.Dense(2)])
    _check_forward(m, _img((2, 13, 3)))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("G", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
def test_global_pooling2d_forward(G, keepdims):
    m = keras.Sequential([keras.Input((7, 6, 4)), layers.Conv2D(5, 3), getattr(layers, G)(keepdims=keepdims),
                          layers.Flatten(), layers.Dense(3)])
    _check_forward(m, _img((2, 7, 6, 4)))


@pytest.mark.parametrize("G", ["GlobalAveragePooling1D", "GlobalMaxPooling1D"])
def test_global_pooling1d_forward(G):
    m = keras.Sequential([keras.Input((9, 4)), layers.Conv1D(5, 3, strides=2, dilation_rate=1), getattr(layers, G)(),
                          layers.Dense(3)])
    _check_forward(m, _img((2, 9, 4)))


@pytest.mark.parametrize(
    "act",
    ["relu", "tanh", "sigmoid", "elu", "leaky_relu", "gelu", "silu", "swish", "softplus", "linear"],
)
def test_activations_forward(act):
    m = keras.Sequential([keras.Input((6,)), layers.Dense(8, activation=act), layers.Dense(3)])
    _check_forward(m, _img((4, 6)) * 2)


@pytest.mark.parametrize(
    "layer",
    [layers.LeakyReLU(negative_slope=0.1), layers.ELU(alpha=0.7), layers.ReLU(), layers.ReLU(negative_slope=0.05),
     layers.Dropout(0.3), layers.Activation("softplus"), layers.GaussianNoise(0.1)],
    ids=lambda l: type(l).__name__,
)
def test_activation_layers_forward(layer):
    m = keras.Sequential([keras.Input((6,)), layers.Dense(8), layer, layers.Dense(3)])
    _check_forward(m, _img((4, 6)) * 2)


def test_batchnorm_folding_and_unfolded_warning():
    x = _img((2, 9, 9, 3))
    # BN after a conv without activation: folded; BN before an unpadded conv: folded into its input side
    m = keras.Sequential([keras.Input((9, 9, 3)), layers.Conv2D(4, 3), layers.BatchNormalization(), layers.ReLU(),
                          layers.BatchNormalization(), layers.Conv2D(6, 3, groups=2), layers.Flatten(), layers.Dense(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = _check_forward(m, x)
    assert not [n for n in g.nodes if n.op == "batchnorm"] and len(g.meta["folded_batchnorm"]) == 2
    # BN before a dense layer (MLP)
    m = keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu"), layers.BatchNormalization(),
                          layers.Dense(3)])
    g = _check_forward(m, _img((4, 6)))
    assert not [n for n in g.nodes if n.op == "batchnorm"]
    # BN after a ReLU and before a padded conv cannot be folded exactly
    m = keras.Sequential([keras.Input((9, 9, 3)), layers.Conv2D(4, 3, activation="relu"), layers.BatchNormalization(),
                          layers.Conv2D(4, 3, padding="same"), layers.GlobalAveragePooling2D(), layers.Dense(2)])
    randomize(m, 8)
    with pytest.warns(UserWarning, match="could not be folded"):
        g = from_keras(m)
    assert [n.op for n in g.nodes].count("batchnorm") == 1
    np.testing.assert_allclose(explainer(g, "epsilon_plus").forward(x), keras_forward(m, x), atol=FWD_TOL)


def test_softmax_stripped_with_warning():
    m = keras.Sequential([keras.Input((6,)), layers.Dense(4), layers.Softmax()])
    randomize(m)
    x = _img((3, 6))
    with pytest.warns(UserWarning, match="stripped"):
        g = from_keras(m)
    assert g[g.output].op == "dense"
    logits = _np(m.layers[0](x.astype("float32")))
    np.testing.assert_allclose(explainer(g, "epsilon_plus").forward(x), logits, atol=FWD_TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g2 = from_keras(m, keep_output_activation=True)
    assert g2[g2.output].attrs["kind"] == "softmax"


def test_nested_sequential_in_functional():
    inner = keras.Sequential([keras.Input((6, 6, 4)), layers.Conv2D(4, 3, padding="same", activation="relu"),
                              layers.MaxPooling2D(2)], name="block")
    inp = keras.Input((6, 6, 3))
    h = layers.Conv2D(4, 1, name="stem")(inp)
    h = inner(h)
    h = layers.Flatten()(h)
    out = layers.Dense(3)(h)
    m = keras.Model(inp, out)
    g = _check_forward(m, _img((2, 6, 6, 3)))
    assert any(n.name.startswith("block/") for n in g.nodes)


def test_keras_permute_and_reshape():
    m = keras.Sequential([keras.Input((6, 5, 2)), layers.Conv2D(3, 3, padding="same"), layers.Permute((2, 1, 3)),
                          layers.Conv2D(4, 2), layers.Reshape((4 * 5, 4)), layers.Conv1D(2, 3), layers.Flatten(),
                          layers.Dense(3)])
    _check_forward(m, _img((2, 6, 5, 2)))


def test_channels_first_conv():
    m = keras.Sequential([keras.Input((3, 8, 7)), layers.Conv2D(4, 3, data_format="channels_first"),
                          layers.MaxPooling2D(2, data_format="channels_first"), layers.Flatten(), layers.Dense(3)])
    g = _check_forward(m, _img((2, 3, 8, 7)))
    assert g.meta["layout"] == "channels_first"
    assert not [n for n in g.nodes if n.op == "permute"]


# ------------------------------------------------------------------------------------
# errors


def _raises_naming(model, name, cls, match=None):
    with pytest.raises(UnsupportedLayerError) as e:
        quiet(from_keras, model)
    msg = str(e.value)
    assert name in msg and cls in msg, msg
    if match:
        assert match in msg, msg
    assert isinstance(e.value, GraphError)


@pytest.mark.parametrize(
    "make,cls",
    [
        (lambda: layers.UnitNormalization(name="bad"), "UnitNormalization"),
        (lambda: layers.UpSampling2D(interpolation="bicubic", name="bad"), "UpSampling2D"),
        (lambda: layers.GroupNormalization(groups=1, name="bad"), "GroupNormalization"),
        (lambda: layers.PReLU(name="bad"), "PReLU"),
        (lambda: layers.Conv2D(2, 3, activation="selu", name="bad"), "Conv2D"),
        (lambda: layers.Activation("softsign", name="bad"), "Activation"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unsupported_layer_named(make, cls):
    m = keras.Sequential([keras.Input((6, 6, 2)), make(), layers.Flatten(), layers.Dense(2)])
    _raises_naming(m, "bad", cls)


def test_unsupported_lstm():
    m = keras.Sequential([keras.Input((5, 3)), layers.LSTM(4, name="rnn"), layers.Dense(2)])
    _raises_naming(m, "rnn", "LSTM")


def test_dense_on_a_sequence_acts_on_the_last_axis():
    m = keras.Sequential([keras.Input((5, 3)), layers.Dense(4, name="td"), layers.Flatten(), layers.Dense(2)])
    randomize(m, seed=3)
    g = from_keras(m)
    assert g["td"].shape == (5, 4)
    x = np.random.default_rng(3).standard_normal((2, 5, 3))
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    np.testing.assert_allclose(ex.forward(x), keras_forward(m, x), rtol=FWD_TOL, atol=FWD_TOL)


def test_shared_layer_error():
    inp = keras.Input((4,))
    shared = layers.Dense(4, name="shared")
    h = shared(inp)
    h = shared(h)
    m = keras.Model(inp, layers.Dense(2)(h))
    _raises_naming(m, "shared", "Dense", match="more than one place")


def test_several_inputs_or_outputs_error():
    a, b = keras.Input((4,)), keras.Input((4,))
    m = keras.Model([a, b], layers.Dense(2)(layers.Add()([a, b])))
    with pytest.raises(UnsupportedLayerError, match="exactly one input and one output"):
        from_keras(m)
    a = keras.Input((4,))
    m = keras.Model(a, [layers.Dense(2)(a), layers.Dense(3)(a)])
    with pytest.raises(UnsupportedLayerError, match="exactly one input and one output"):
        from_keras(m)


def test_subclassed_model_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Net()
    m(np.zeros((1, 3), dtype="float32"))
    with pytest.raises(UnsupportedLayerError, match="subclassed"):
        from_keras(m)


def test_not_a_model():
    with pytest.raises(TypeError):
        from_keras(object())


# ------------------------------------------------------------------------------------
# iNNvestigate presets


def test_innvestigate_presets_resolve():
    from fastlrp import innvestigate as inn
    from fastlrp.rules import AlphaBeta, Epsilon, Flat

    k, _, xk, _ = cnn_pair()
    g = quiet(from_keras, k)
    par = [n.name for n in g.nodes if n.op in ("dense", "conv")]
    for name in inn.PRESETS:
        comp = fastlrp.get_composite("lrp.alpha_beta(alpha=3)" if name == "lrp.alpha_beta" else name)
        comp.resolve(g)
        R = explainer(g, comp).explain(xk, target=0)
        assert np.isfinite(R).all(), name
    a = fastlrp.get_composite("lrp.sequential_preset_a_flat").resolve(g)
    # iNNvestigate's AlphaBeta: the whole bias in both sums, safe-divided (docs/innvestigate.md)
    inn_ab = dict(guard="zero", whole_bias=True)
    assert isinstance(a[par[0]], Flat) and a[par[1]] == AlphaBeta(1.0, 0.0, 1e-7, **inn_ab)
    assert a[par[-1]] == Epsilon(0.1)
    b = fastlrp.get_composite("lrp.sequential_preset_b").resolve(g)
    assert b[par[0]] == AlphaBeta(2.0, 1.0, 1e-7, **inn_ab)
    assert fastlrp.get_composite("lrp.alpha_beta(beta=2)").resolve(g)[par[0]] == AlphaBeta(3.0, 2.0, 1e-7, **inn_ab)
    with pytest.raises(fastlrp.RuleError, match="alpha or beta"):
        fastlrp.get_composite("lrp.alpha_beta")
    assert fastlrp.get_composite("lrp.epsilon(epsilon=0.01)").resolve(g)[par[0]] == Epsilon(0.01)
    assert fastlrp.get_composite("lrp.epsilon_ib").resolve(g)[par[0]] == Epsilon(1e-7, zero_bias=True)


def test_innvestigate_flat_input_layers_in_branching_model():
    """iNNvestigate's input-layer rule hits every kernel layer fed by the input."""
    inp = keras.Input((6, 6, 2))
    a = layers.Conv2D(3, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(3, 1, name="b")(inp)
    h = layers.Add()([a, b])
    h = layers.Conv2D(2, 3, name="c")(h)
    out = layers.Dense(2, name="d")(layers.Flatten()(h))
    g = from_keras(keras.Model(inp, out))
    from fastlrp.innvestigate import lrp_sequential_preset_b_flat
    from fastlrp.rules import Flat

    rules = lrp_sequential_preset_b_flat().resolve(g)
    assert isinstance(rules["a"], Flat) and isinstance(rules["b"], Flat) and not isinstance(rules["c"], Flat)


def test_innvestigate_alpha_beta_hand_case():
    """docs/design.md section 2.5's hand-checked case through a one-layer Keras model, IB variant (no bias)."""
    m = keras.Sequential([keras.Input((2,)), layers.Dense(1, use_bias=False)])
    m.layers[0].set_weights([np.array([[1.0], [-1.0]], dtype="float32")])
    g = from_keras(m)
    # x = (1, 2): z = -1
    R = explainer(g, "lrp.alpha_2_beta_1_ib").explain(np.array([1.0, 2.0]))
    # za = 1 (from x1), zb = -2 (from x2): R = 2*(-1)*(1,0) - 1*(-1)*(0,1)  = (-2, 1)
    np.testing.assert_allclose(R, [-2.0, 1.0], rtol=1e-6)


# ------------------------------------------------------------------------------------
# attention: keras.layers.MultiHeadAttention against torch's nn.MultiheadAttention
def _attention_pair(causal: bool, E=8, T=5, H=2, seed=3):
    """A pre-norm attention block + GELU MLP head in Keras, and the same block in PyTorch
    (nn.MultiheadAttention, batch_first) with the Keras weights copied."""
    inp = layers.Input((T, E))
    h = layers.LayerNormalization(epsilon=1e-5)(inp)
    a = layers.MultiHeadAttention(num_heads=H, key_dim=E // H)(h, h, use_causal_mask=causal)
    h = layers.Add()([inp, a])
    h = layers.GlobalAveragePooling1D()(h)
    out = layers.Dense(3)(h)
    km = randomize(keras.Model(inp, out), seed=seed)
    ln, mha, dense = km.layers[1], km.layers[2], km.layers[-1]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm(E, eps=1e-5)
            self.att = torch.nn.MultiheadAttention(E, H, batch_first=True)
            self.fc = torch.nn.Linear(E, 3)
            self.causal = causal

        def forward(self, x):
            h = self.ln(x)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if self.causal else None
            h = x + self.att(h, h, h, attn_mask=mask, need_weights=False)[0]
            return self.fc(h.permute(0, 2, 1).mean(2))  # (the importer takes means over (N, C, L) axes)

    tm = Block().eval()
    with torch.no_grad():
        tm.ln.weight.copy_(t(_np(ln.gamma))), tm.ln.bias.copy_(t(_np(ln.beta)))
        w = [_np(d.kernel).reshape(E, E).T for d in (mha._query_dense, mha._key_dense, mha._value_dense)]
        b = [_np(d.bias).reshape(E) for d in (mha._query_dense, mha._key_dense, mha._value_dense)]
        tm.att.in_proj_weight.copy_(t(np.concatenate(w))), tm.att.in_proj_bias.copy_(t(np.concatenate(b)))
        tm.att.out_proj.weight.copy_(t(_np(mha._output_dense.kernel).reshape(E, E).T))
        tm.att.out_proj.bias.copy_(t(_np(mha._output_dense.bias)))
        copy_dense(tm.fc, dense)
    return km, tm


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_multihead_attention_matches_keras_and_torch(causal):
    """The Keras layer imports to the graph torch's nn.MultiheadAttention imports to:
    the same forward (Keras' own output) and the same relevance, for AttnLRP and CP-LRP;
    the cpu backend agrees with the float64 reference."""
    km, tm = _attention_pair(causal)
    x = np.random.default_rng(4).standard_normal((3, 5, 8))
    g = from_keras(km)
    gt = fastlrp.from_torch(tm, torch.as_tensor(x[:1], dtype=torch.float32))
    for comp in ("attnlrp", "cp_lrp"):
        ex, et = explainer(g, comp), explainer(gt, comp)
        close(ex.forward(x), keras_forward(km, x), rtol=FWD_TOL, atol_rel=FWD_TOL)
        close(ex.forward(x), et.forward(x), rtol=1e-9, atol_rel=1e-12)
        R = ex.explain(x)
        close(R, et.explain(x), rtol=1e-8, atol_rel=1e-10)
        for backend in ("cpu", "numba"):
            try:
                ec = fastlrp.Explainer(g, comp, backend=backend)
            except Exception as e:  # noqa: BLE001 - a backend this machine lacks
                print(f"{backend} not available: {e}")
                continue
            close(ec.explain(x.astype(np.float32)), R, rtol=1e-3, atol_rel=2e-4)


def test_multihead_attention_refuses_masks_and_gates():
    inp = layers.Input((4, 6))
    m = layers.Input((4, 4))
    a = layers.MultiHeadAttention(num_heads=2, key_dim=3)(inp, inp, attention_mask=m)
    with pytest.raises(UnsupportedLayerError, match="(attention_mask|input)"):
        from_keras(keras.Model([inp, m], layers.Flatten()(a)))
    a = layers.MultiHeadAttention(num_heads=2, key_dim=3, attention_axes=(2,))
    inp3 = layers.Input((4, 5, 6))
    with pytest.raises(UnsupportedLayerError, match="attention_axes|tokens"):
        from_keras(keras.Model(inp3, layers.Flatten()(a(inp3, inp3))))
