"""The public API: targets, batch axes, regression, several targets, graph files,
composites, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp.composites import EpsilonGammaBox, EpsilonPlusFlat, get_composite
from fastlrp.explain import InputError
from fastlrp.graph import Graph, GraphBuilder, GraphError
from fastlrp.rules import AlphaBeta, Epsilon, Flat, Gamma, RuleError, ZBox, ZPlus


def _mlp(rng, n_in=6, n_hidden=8, n_out=4):
    b = GraphBuilder((n_in,))
    h = b.dense(b.input, rng.normal(size=(n_hidden, n_in)), rng.normal(size=n_hidden), name="fc1")
    h = b.activation(h, "relu")
    b.dense(h, rng.normal(size=(n_out, n_hidden)), rng.normal(size=n_out), name="fc2")
    return b.build()


def _cnn(rng):
    b = GraphBuilder((2, 6, 6))
    h = b.conv(b.input, rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), padding=1, name="c1")
    h = b.activation(h, "relu")
    h = b.maxpool(h, 2)
    h = b.flatten(h)
    b.dense(h, rng.normal(size=(5, 27)), None, name="fc")
    return b.build()


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_target_forms_agree(rng):
    g = _mlp(rng)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    x = rng.normal(size=(5, 6))
    out = ex.forward(x)
    arg = out.argmax(axis=1)
    r_none = ex.explain(x)
    r_idx = ex.explain(x, target=arg)
    seed = np.zeros_like(out)
    seed[np.arange(5), arg] = out[np.arange(5), arg]
    r_seed = ex.explain(x, target=seed)
    np.testing.assert_array_equal(r_none, r_idx)
    np.testing.assert_allclose(r_none, r_seed, rtol=1e-12)
    # int target: same output for every sample
    r2 = ex.explain(x, target=2)
    r2b = ex.explain(x, target=np.full(5, 2))
    np.testing.assert_array_equal(r2, r2b)


def test_several_targets_share_forward(rng):
    g = _cnn(rng)
    ex = fastlrp.Explainer(g, EpsilonPlusFlat(), backend="reference")
    x = rng.normal(size=(3, 2, 6, 6))
    targets = np.array([[0, 4], [1, 1], [3, 2]])
    R = ex.explain(x, target=targets)
    assert R.shape == (3, 2, 2, 6, 6)
    for k in range(2):
        np.testing.assert_allclose(R[:, k], ex.explain(x, target=targets[:, k]), rtol=1e-12)
    Rall = ex.explain(x, target="all")
    assert Rall.shape == (3, 5, 2, 6, 6)
    np.testing.assert_allclose(Rall[:, 3], ex.explain(x, target=3), rtol=1e-12)


def test_single_sample_without_batch_axis(rng):
    g = _cnn(rng)
    ex = fastlrp.Explainer(g, "epsilon_alpha2_beta1_flat", backend="reference")
    x = rng.normal(size=(2, 6, 6))
    r1 = ex.explain(x)
    assert r1.shape == x.shape
    np.testing.assert_allclose(r1, ex.explain(x[None])[0], rtol=1e-12)
    assert ex.forward(x).shape == (5,)
    r_multi = ex.explain(x, target=[1, 3])
    assert r_multi.shape == (2, 2, 6, 6)


def test_regression_single_output(rng):
    b = GraphBuilder((3,))
    h = b.dense(b.input, rng.normal(size=(5, 3)), rng.normal(size=5))
    h = b.activation(h, "tanh")
    h = b.dense(h, rng.normal(size=(1, 5)), None)
    h = b.activation(h, "tanh")
    g = b.build()
    ex = fastlrp.Explainer(g, fastlrp.Composite({"dense": Epsilon(1e-9)}), backend="reference")
    x = rng.normal(size=3)
    y = ex.forward(x)
    assert y.shape == (1,)
    R = ex.explain(x)
    assert R.shape == (3,)
    assert np.isfinite(R).all() and np.abs(R).sum() > 0
    # batched regression, negative outputs are explained as they are
    xb = rng.normal(size=(4, 3))
    Rb = ex.explain(xb)
    assert Rb.shape == (4, 3)


def test_integer_and_noncontiguous_inputs_are_converted(rng):
    g = _mlp(rng)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    xi = rng.integers(-3, 4, size=(4, 6))
    np.testing.assert_allclose(ex.explain(xi), ex.explain(xi.astype(np.float64)))
    xf = np.asfortranarray(rng.normal(size=(4, 6)))
    xs = rng.normal(size=(4, 12))[:, ::2]
    assert not xs.flags.c_contiguous
    np.testing.assert_allclose(ex.explain(xs), ex.explain(np.ascontiguousarray(xs)))
    np.testing.assert_allclose(ex.explain(xf), ex.explain(np.ascontiguousarray(xf)))


@pytest.mark.parametrize(
    "bad,msg",
    [
        (np.zeros((4, 5)), "does not fit the model"),
        (np.zeros((2, 6, 1)), "does not fit the model"),
        (np.zeros((0, 6)), "empty batch"),
        (np.array([[1, 0, 1, 0, 1, 0]], dtype=bool), "dtype bool"),
        (np.ones((2, 6), dtype=np.complex128), "dtype complex128"),
        (np.array([["a"] * 6]), "dtype"),
    ],
)
def test_bad_inputs(rng, bad, msg):
    ex = fastlrp.Explainer(_mlp(rng), "epsilon_plus", backend="reference")
    with pytest.raises(InputError, match=msg):
        ex.explain(bad)


def test_nan_and_inf_named_by_sample(rng):
    ex = fastlrp.Explainer(_mlp(rng), "epsilon_plus", backend="reference")
    x = rng.normal(size=(5, 6))
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    with pytest.raises(InputError, match=r"sample\(s\) \[1, 3\]"):
        ex.explain(x)


@pytest.mark.parametrize(
    "target,msg",
    [
        (4, "out of range"),
        (-1, "out of range"),
        (np.array([0, 1, 7]), "out of range"),
        (np.array([0, 1]), "does not fit 3 sample"),
        (np.zeros((3, 5)), "output's shape"),
        (np.array([[np.nan] * 4] * 3), "NaN"),
        ("some", "not understood"),
        (np.array(["a", "b", "c"]), "target must be"),
    ],
)
def test_bad_targets(rng, target, msg):
    ex = fastlrp.Explainer(_mlp(rng), "epsilon_plus", backend="reference")
    with pytest.raises(InputError, match=msg):
        ex.explain(rng.normal(size=(3, 6)), target=target)


def test_graph_save_load_roundtrip(tmp_path, rng):
    g = _cnn(rng)
    path = tmp_path / "model.npz"
    g.save(path)
    g2 = Graph.load(path)
    assert g2.fingerprint() == g.fingerprint()
    assert [n.op for n in g2] == [n.op for n in g]
    x = rng.normal(size=(2, 2, 6, 6))
    for comp in ["epsilon_plus_flat", "epsilon_gamma_box(low=-3, high=3)"]:
        a = fastlrp.Explainer(g, comp, backend="reference").explain(x)
        b = fastlrp.Explainer(g2, comp, backend="reference").explain(x)
        np.testing.assert_array_equal(a, b)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception):
        Graph.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(GraphError, match="not a fastlrp graph"):
        Graph.load(tmp_path / "other.npz")


def test_graph_errors_name_the_node(rng):
    b = GraphBuilder((4,))
    b.dense(b.input, rng.normal(size=(3, 5)), None, name="wrong")
    with pytest.raises(GraphError, match="'wrong'.*does not match weight"):
        b.build()
    b = GraphBuilder((2, 5, 5))
    b.conv(b.input, rng.normal(size=(4, 3, 3, 3)), None, name="badconv")
    with pytest.raises(GraphError, match="'badconv'.*input channels"):
        b.build()
    b = GraphBuilder((2, 5, 5))
    h = b.conv(b.input, rng.normal(size=(4, 2, 3, 3)), None)
    b.add(h, b.input, name="sum")
    with pytest.raises(GraphError, match="'sum'.*different shapes"):
        b.build()
    b = GraphBuilder((1, 1, 1))
    b.maxpool(b.input, 2, stride=1, padding=1, dilation=2, name="mp")
    with pytest.raises(GraphError, match="'mp'.*entirely in the padding"):
        b.build()


def test_rule_arguments_validated():
    with pytest.raises(RuleError, match="alpha - beta = 1"):
        AlphaBeta(2, 2)
    with pytest.raises(RuleError, match=">= 0"):
        AlphaBeta(0.5, -0.5)
    with pytest.raises(RuleError):
        Epsilon(-1)
    with pytest.raises(RuleError):
        Gamma(-0.1)
    with pytest.raises(RuleError, match="low <= high"):
        ZBox(1.0, 0.0)
    with pytest.raises(RuleError, match="unknown composite"):
        get_composite("epsilon_minus")
    with pytest.raises(RuleError, match="low"):
        get_composite("epsilon_gamma_box")


def test_composite_mapping(rng):
    g = _cnn(rng)
    rules = EpsilonGammaBox(-1, 1).resolve(g)
    assert isinstance(rules["c1"], ZBox) and isinstance(rules["fc"], Epsilon)
    rules = get_composite("epsilon_plus_flat").resolve(g)
    assert isinstance(rules["c1"], Flat) and isinstance(rules["fc"], Epsilon)
    rules = get_composite("epsilon_plus").resolve(g)
    assert isinstance(rules["c1"], ZPlus)
    # an MLP gets no ZBox layer under epsilon_gamma_box (zennit maps it to convolutions only)
    rules = EpsilonGammaBox(-1, 1).resolve(_mlp(rng))
    assert all(isinstance(rules[n], Epsilon) for n in ("fc1", "fc2"))
    # user composites: by name, by type, by position
    c = fastlrp.Composite({"conv": Gamma(0.5), "dense": Epsilon(0.1)}, last=ZPlus(), names={"c1": AlphaBeta(1, 0)})
    rules = c.resolve(g)
    assert rules["c1"] == AlphaBeta(1, 0) and rules["fc"] == ZPlus()
    base = fastlrp.Composite(names={"fc": Epsilon(0.5)}, base=get_composite("epsilon_plus"))
    rules = base.resolve(g)
    assert rules["fc"] == Epsilon(0.5) and isinstance(rules["c1"], ZPlus)
    with pytest.raises(RuleError, match="no node named 'nope'"):
        fastlrp.Composite({"linear": Epsilon()}, names={"nope": Epsilon()}).resolve(g)
    with pytest.raises(RuleError, match="no rule for node 'fc'"):
        fastlrp.Composite({"conv": Epsilon()}).resolve(g)
    with pytest.raises(RuleError, match="cannot be applied"):
        fastlrp.Composite({"linear": Epsilon(), "maxpool": Flat()}).resolve(g)
    # ignore-bias variants change the result when biases are present
    m = _mlp(rng)
    x = rng.normal(size=(2, 6))
    a = fastlrp.Explainer(m, get_composite("epsilon_plus"), backend="reference").explain(x)
    b = fastlrp.Explainer(m, fastlrp.composites.EpsilonPlus(zero_bias=True), backend="reference").explain(x)
    assert not np.allclose(a, b)


def test_unknown_backend(rng):
    from fastlrp.backends.base import BackendError

    with pytest.raises(BackendError, match="unknown backend"):
        fastlrp.Explainer(_mlp(rng), "epsilon_plus", backend="tpu")
    with pytest.raises(TypeError, match="from_torch"):
        fastlrp.Explainer(object(), "epsilon_plus")


def test_channels_last_layout(rng):
    g = _cnn(rng)
    g.meta["layout"] = "channels_last"
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    ref = fastlrp.Explainer(_cnn(np.random.default_rng(42)), "epsilon_plus", backend="reference")
    x = np.random.default_rng(0).normal(size=(2, 2, 6, 6))
    R_nhwc = ex.explain(np.moveaxis(x, 1, -1))
    np.testing.assert_allclose(np.moveaxis(R_nhwc, -1, 1), ref.explain(x), rtol=1e-12)
