"""The target parser (fastlrp.targets) and the batch-level engine call (Explainer.explain_batch)."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp.backends.base import DeviceOutOfMemory
from fastlrp.explain import BatchResult
from fastlrp.rules import Epsilon
from fastlrp.targets import InputError, TargetSpec, one_sample_target, parse_target

from _graphs import small_graph

OUT = (5,)


def onehot(out, idx):
    """Seed with each sample's output value at idx (N,), written out by hand."""
    seed = np.zeros_like(out)
    for i, k in enumerate(idx):
        seed[i, k] = out[i, k]
    return seed


@pytest.fixture
def out():
    return np.random.default_rng(0).normal(size=(4,) + OUT)


# ------------------------------------------------------------------------------------------
# parse_target: every form


@pytest.mark.parametrize("target", [None, "argmax", "pred", "Prediction", "none", " PRED "])
def test_argmax_forms(out, target):
    spec = parse_target(target, OUT)
    assert isinstance(spec, TargetSpec)
    assert (spec.kind, spec.key, spec.k, spec.multi, spec.per_sample) == ("argmax", "argmax", 1, False, False)
    np.testing.assert_array_equal(spec.indices(out)[:, 0], out.argmax(1))
    [seed] = spec.seeds(out)
    np.testing.assert_array_equal(seed, onehot(out, out.argmax(1)))


@pytest.mark.parametrize("target", [3, np.int64(3), np.array(3), np.uint8(3)])
def test_one_index_for_all(out, target):
    spec = parse_target(target, OUT)
    assert (spec.kind, spec.index, spec.key, spec.multi) == ("index", 3, "class:3", False)
    np.testing.assert_array_equal(spec.indices(out), np.full((4, 1), 3))
    np.testing.assert_array_equal(spec.seeds(out)[0], onehot(out, [3] * 4))


def test_all(out):
    spec = parse_target("all", OUT)
    assert (spec.kind, spec.k, spec.multi, spec.key) == ("all", 5, True, "all")
    np.testing.assert_array_equal(spec.indices(out), np.tile(np.arange(5), (4, 1)))
    seeds = spec.seeds(out)
    assert len(seeds) == 5
    for k, s in enumerate(seeds):
        np.testing.assert_array_equal(s, onehot(out, [k] * 4))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_per_sample_indices(out, dtype):
    t = np.array([4, 0, 2, 2], dtype=dtype)
    spec = parse_target(t, OUT, n_samples=4)
    assert (spec.kind, spec.k, spec.multi) == ("indices", 1, False)
    assert spec.key.startswith("array:") and spec.key.endswith(np.dtype(dtype).str)
    np.testing.assert_array_equal(spec.indices(out), t[:, None])
    np.testing.assert_array_equal(spec.seeds(out)[0], onehot(out, t))
    t2 = np.array([[1, 4], [0, 0], [3, 2], [2, 1]], dtype=dtype)
    spec2 = parse_target(t2, OUT, n_samples=4)
    assert (spec2.k, spec2.multi) == (2, True)
    seeds = spec2.seeds(out)
    for k in range(2):
        np.testing.assert_array_equal(seeds[k], onehot(out, t2[:, k]))
    assert parse_target(t.astype(np.int8), OUT).key != spec.key  # the key names the values, dtype and shape


def test_seed_relevance(out):
    seed = np.random.default_rng(1).normal(size=(4,) + OUT).astype(np.float32)
    spec = parse_target(seed, OUT, n_samples=4)
    assert (spec.kind, spec.k, spec.multi, spec.indices(out)) == ("seed", 1, False, None)
    assert spec.key.startswith("seed:")
    [s] = spec.seeds(out, dtype=np.float64)
    assert s.dtype == np.float64 and s.flags.c_contiguous
    np.testing.assert_array_equal(s, seed.astype(np.float64))
    assert parse_target(seed + 1, OUT).key != spec.key


@pytest.mark.parametrize("word", ["label", "labels", "y", "Label"])
def test_label_forms(word):
    spec = parse_target(word, OUT, n_samples=10)
    assert (spec.kind, spec.key, spec.k, spec.multi) == ("label", "label", 1, False)
    with pytest.raises(InputError, match="needs the labels"):
        spec.check_batch(3)
    y = np.array([4, 0, 1])
    got = spec.with_labels(y)
    assert (got.kind, got.key) == ("indices", "label")
    np.testing.assert_array_equal(got.indices(np.zeros((3, 5))), y[:, None])
    two = spec.labelled_like(np.zeros((7, 2), int))
    assert (two.k, two.multi) == (2, True)
    np.testing.assert_array_equal(two.with_labels(np.array([[1, 2], [3, 4]])).array, [[1, 2], [3, 4]])
    with pytest.raises(InputError, match="2 column"):
        two.with_labels(y)
    with pytest.raises(InputError, match="label out of range"):
        spec.with_labels(np.array([0, 5]))
    with pytest.raises(InputError, match=r"\(x, y\) batches"):
        spec.with_labels(None)
    with pytest.raises(ValueError, match="for target='label'"):
        parse_target(2, OUT).with_labels(y)


def test_torch_targets(out):
    torch = pytest.importorskip("torch")
    spec = parse_target(torch.tensor([1, 2, 3, 4]), OUT, n_samples=4)
    np.testing.assert_array_equal(spec.indices(out)[:, 0], [1, 2, 3, 4])
    seed = parse_target(torch.ones(4, 5, dtype=torch.float64), OUT)
    np.testing.assert_array_equal(seed.seeds(out)[0], np.ones((4, 5)))
    assert parse_target(torch.tensor(2), OUT).index == 2


@pytest.mark.parametrize(
    "target,n,msg",
    [
        (5, None, "target index 5 is out of range: the model has 5"),
        (-1, None, "out of range"),
        (np.array([0, 1, 7]), 3, r"out of range: the model has 5 output\(s\), got 0..7"),
        (np.array([0, 1]), 3, r"does not fit 3 sample\(s\) \(it has 2 rows\)"),
        (np.zeros((2, 2, 2), int), None, "does not fit"),
        (np.zeros((3, 4)), 3, r"output's shape \(3, 5\), got \(3, 4\)"),
        (np.zeros((2, 5)), 3, "seed relevance .* has 2 rows but there are 3 samples"),
        (np.array(1.5), None, "output's shape"),
        (np.array([[np.nan] * 5] * 3), 3, "NaN or Inf"),
        ("some", None, "target 'some' is not understood"),
        (np.array(["a", "b", "c"]), 3, "target must be .* dtype <U1"),
        (True, None, "target must be .* dtype bool"),
        (np.array([True, False]), 2, "target must be"),
        (object(), None, "target must be"),
    ],
)
def test_bad_targets(target, n, msg):
    with pytest.raises(InputError, match=msg):
        parse_target(target, OUT, n_samples=n)


def test_spec_passes_through_and_checks_its_batch(out):
    spec = parse_target(np.array([1, 2, 3, 4]), OUT)
    assert parse_target(spec, OUT, n_samples=4) is spec
    with pytest.raises(InputError, match="made for outputs of shape"):
        parse_target(spec, (7,))
    with pytest.raises(InputError, match=r"does not fit 3 sample"):
        spec.indices(out[:3])
    with pytest.raises(InputError, match="does not fit 5 sample"):
        parse_target(spec, OUT, n_samples=5)


def test_select():
    t = np.arange(10) % 5
    seed = np.random.default_rng(2).normal(size=(10, 5))
    for spec, rows in ((parse_target(t, OUT), t), (parse_target(seed, OUT), seed)):
        np.testing.assert_array_equal(spec.select(slice(3, 7)).array.reshape(4, -1), rows[3:7].reshape(4, -1))
        mask = np.arange(10) % 3 == 0
        np.testing.assert_array_equal(spec.select(mask).array.reshape(4, -1), rows[mask].reshape(4, -1))
        np.testing.assert_array_equal(spec.select(np.array([9, 0])).array.reshape(2, -1),
                                      rows[[9, 0]].reshape(2, -1))
        assert spec.select(slice(0, 2)).key == spec.key
    for scalar in (None, 2, "all", "label"):
        spec = parse_target(scalar, OUT)
        assert spec.select(slice(0, 2)) is spec


def test_one_sample_target():
    assert one_sample_target(None, OUT) is None and one_sample_target(3, OUT) == 3
    assert one_sample_target("all", OUT) == "all"
    np.testing.assert_array_equal(one_sample_target([1, 3], OUT), [[1, 3]])
    np.testing.assert_array_equal(one_sample_target(np.ones(5), OUT), np.ones((1, 5)))
    with pytest.raises(InputError, match=r"output's shape \(5,\), got \(1, 5\)"):
        one_sample_target(np.ones((1, 5)), OUT)
    with pytest.raises(InputError, match="does not fit one sample"):
        one_sample_target(np.ones((1, 2), int), OUT)


# ------------------------------------------------------------------------------------------
# Explainer.explain_batch


@pytest.fixture(scope="module")
def ex():
    return fastlrp.Explainer(small_graph(), "epsilon_plus_flat", backend="reference")


def data(n=6, seed=3):
    return np.random.default_rng(seed).normal(size=(n, 1, 6, 6))


@pytest.mark.parametrize("target", [None, 2, "all", "pred", np.array([0, 1, 2, 3, 4, 0]),
                                    np.array([[0, 4]] * 6), "seed"])
def test_explain_batch_is_explain(ex, target):
    x = data()
    if isinstance(target, str) and target == "seed":
        target = np.random.default_rng(4).normal(size=(6, 5))
    res = ex.explain_batch(x, target, return_layers=True)
    assert isinstance(res, BatchResult)
    R, rep = ex.explain(x, target, return_layers=True)
    np.testing.assert_array_equal(res.relevance, R)
    np.testing.assert_array_equal(res.output, ex.forward(x))
    assert res.valid.dtype == bool and res.valid.all()
    spec = parse_target(target, OUT, n_samples=6)
    want = spec.indices(ex.forward(x))
    if want is None:
        assert res.targets is None
    else:
        assert res.targets.dtype == np.int64
        np.testing.assert_array_equal(res.targets, want if spec.multi else want[:, 0])
    reports = res.report if spec.multi else [res.report]
    want_reports = rep if spec.multi else [rep]
    assert len(reports) == spec.k
    for a, b in zip(reports, want_reports):
        np.testing.assert_array_equal(a.explained, b.explained)
        for n in a.names:
            np.testing.assert_array_equal(a.relevance_in[n], b.relevance_in[n])


def test_explain_batch_one_sample_is_a_batch_of_one(ex):
    x = data(1)
    res = ex.explain_batch(x[0], target=[3])
    assert res.relevance.shape == (1, 1, 6, 6) and res.targets.tolist() == [3]
    np.testing.assert_array_equal(res.relevance, ex.explain(x, target=3))
    assert ex.explain(x[0], target=[3, 1]).shape == (2, 1, 6, 6)  # (K,) ints are K targets of one sample


def test_explain_batch_refuses(ex):
    with pytest.raises(InputError, match="needs the labels"):
        ex.explain_batch(data(), "label")
    with pytest.raises(InputError, match="NaN or Inf values in sample"):
        ex.explain_batch(np.full((2, 1, 6, 6), np.nan))
    with pytest.raises(ValueError, match="nonfinite must be"):
        ex.explain_batch(data(), nonfinite="ignore")
    with pytest.raises(InputError, match="does not fit 6 sample"):
        ex.explain_batch(data(), np.array([1, 2]))


def test_channels_last_sample_shape():
    g = small_graph()
    g.meta["layout"] = "channels_last"
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    assert ex.channels_last and ex.sample_shape == (6, 6, 1) and ex.graph.input_shape == (1, 6, 6)
    x = data()
    res = ex.explain_batch(np.moveaxis(x, 1, -1))
    ref = fastlrp.Explainer(small_graph(), "epsilon_plus", backend="reference")
    np.testing.assert_allclose(np.moveaxis(res.relevance, -1, 1), ref.explain(x), rtol=1e-12)
    assert not ref.channels_last and ref.sample_shape == (1, 6, 6)
    assert ref.nodes == tuple(ref.graph.nodes) and isinstance(ref.nodes, tuple)


# ------------------------------------------------------------------------------------------
# skipping samples with NaN/Inf


def overflow_graph():
    """dense (x 1e30) -> relu -> dense (x 1e10): an input near 1e300 overflows to an Inf output."""
    b = fastlrp.GraphBuilder((3,))
    h = b.dense(b.input, np.eye(3) * 1e30, None)
    h = b.activation(h, "relu")
    h = b.dense(h, np.ones((2, 3)) * 1e10, np.zeros(2))
    return b.build()


@pytest.mark.parametrize("target", [None, "all", "seed"])
def test_skip_nonfinite_inputs_and_outputs(ex, target):
    x = data(7)
    x[2, 0, 1, 1] = np.nan
    x[5, 0, 0, 0] = np.inf
    if target == "seed":
        target = np.random.default_rng(5).normal(size=(7, 5))
    res = ex.explain_batch(x, target, nonfinite="skip", return_layers=True)
    good = np.array([0, 1, 3, 4, 6])
    np.testing.assert_array_equal(res.valid, np.isin(np.arange(7), good))
    spec = parse_target(target, OUT, n_samples=7)
    sub = spec.select(good)
    R, rep = ex.explain(x[good], None if sub.kind == "argmax" else (sub.array if sub.per_sample else target),
                        return_layers=True)
    np.testing.assert_array_equal(res.relevance[good], R)
    assert np.isnan(res.relevance[[2, 5]]).all() and np.isnan(res.output[[2, 5]]).all()
    np.testing.assert_array_equal(res.output[good], ex.forward(x[good]))
    if res.targets is not None:
        assert (res.targets[[2, 5]] == -1).all() and (res.targets[good] >= 0).all()
    reps, want = (res.report, rep) if spec.multi else ([res.report], [rep])
    for a, b in zip(reps, want):
        np.testing.assert_array_equal(a.explained[good], b.explained)
        assert np.isnan(a.explained[[2, 5]]).all()
    with pytest.raises(InputError, match=r"sample\(s\) \[2, 5\]"):
        ex.explain_batch(x, target)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_skip_overflowing_outputs_and_whole_batches():
    ex = fastlrp.Explainer(overflow_graph(), fastlrp.Composite({"dense": Epsilon(1e-9)}), backend="reference")
    x = np.array([[1.0, 2.0, 3.0], [1e300, 1.0, 1.0], [0.5, 0.1, 0.2]])
    with pytest.raises(InputError, match=r"output is NaN or Inf for sample\(s\) \[1\]"):
        ex.explain_batch(x)
    res = ex.explain_batch(x, "all", nonfinite="skip")
    np.testing.assert_array_equal(res.valid, [True, False, True])
    np.testing.assert_array_equal(res.relevance[[0, 2]], ex.explain(x[[0, 2]], "all"))
    assert np.isnan(res.relevance[1]).all() and np.isnan(res.output[1]).all()
    np.testing.assert_array_equal(res.targets, [[0, 1], [-1, -1], [0, 1]])
    none = ex.explain_batch(np.full((2, 3), np.nan), "all", nonfinite="skip", return_layers=True)
    assert none.relevance.shape == (2, 2, 3) and np.isnan(none.relevance).all()
    assert not none.valid.any() and (none.targets == -1).all() and none.output.shape == (2, 2)
    assert len(none.report) == 2 and np.isnan(none.report[0].explained).all()


# ------------------------------------------------------------------------------------------
# out-of-memory splitting


class TinyDevice:
    """The reference backend on a pretend device that holds at most ``limit`` samples:
    moving a larger batch "to the device" raises DeviceOutOfMemory, as a real device
    backend's allocation does."""

    name = "tiny-device"

    def __init__(self, limit):
        self.ref = fastlrp.get_backend("reference")
        self.dtype = self.ref.dtype
        self.limit = limit
        self.done = []  # the batch sizes that fitted

    def prepare(self, graph, node, rule):
        return self.ref.prepare(graph, node, rule)

    def to_device(self, a):
        if a.shape[0] > self.limit:
            raise DeviceOutOfMemory(f"tiny device: {a.shape[0]} samples do not fit", requested=a.shape[0] * 8,
                                    free=self.limit * 8)
        self.done.append(a.shape[0])
        return a

    def to_host(self, a):
        return np.asarray(a)


@pytest.mark.parametrize("target", [None, "all", "seed", "per-sample"])
def test_out_of_memory_splits_in_halves(ex, target):
    x = data(7)
    if target == "seed":
        target = np.random.default_rng(6).normal(size=(7, 5))
    elif target == "per-sample":
        target = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 0], [1, 1], [2, 2]])
    dev = TinyDevice(limit=2)
    small = fastlrp.Explainer(small_graph(), "epsilon_plus_flat", backend=dev)
    res = small.explain_batch(x, target, return_layers=True)
    want = ex.explain_batch(x, target, return_layers=True)
    assert set(dev.done) <= {1, 2} and 2 in dev.done  # 7 -> 3 + 4 -> 1 + 2, 2 + 2
    np.testing.assert_allclose(res.relevance, want.relevance, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.output, want.output, rtol=1e-12)  # other batch sizes: BLAS may round otherwise
    if want.targets is None:
        assert res.targets is None
    else:
        np.testing.assert_array_equal(res.targets, want.targets)
    reps = res.report if isinstance(res.report, list) else [res.report]
    wants = want.report if isinstance(want.report, list) else [want.report]
    for a, b in zip(reps, wants):
        assert a.names == b.names
        np.testing.assert_allclose(a.explained, b.explained, rtol=1e-12)
        for n in a.names:
            np.testing.assert_allclose(a.relevance_out[n], b.relevance_out[n], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small.explain(x, target), want.relevance, rtol=1e-12, atol=1e-15)


def test_out_of_memory_with_skipped_samples(ex):
    x = data(7)
    x[3, 0, 2, 2] = np.nan
    res = fastlrp.Explainer(small_graph(), "epsilon_plus_flat", backend=TinyDevice(2)).explain_batch(
        x, np.arange(7) % 5, nonfinite="skip")
    want = ex.explain_batch(x, np.arange(7) % 5, nonfinite="skip")
    np.testing.assert_array_equal(res.valid, want.valid)
    np.testing.assert_allclose(res.relevance, want.relevance, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(res.targets, [0, 1, 2, -1, 4, 0, 1])


def test_one_sample_out_of_memory_is_reported():
    small = fastlrp.Explainer(small_graph(), "epsilon_plus_flat", backend=TinyDevice(0))
    with pytest.raises(DeviceOutOfMemory, match="explaining one sample needs more device memory than is free: "
                                                "tiny device: 1 samples") as info:
        small.explain_batch(data(3))
    assert (info.value.requested, info.value.free) == (8, 0)
