"""What only the Numba backend has: the static sign split of its packed weights,
im2col chunking, its threads, its name and errors. (Its ops, rules and whole
networks against the float64 reference: test_backend_matrix.py.)"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastlrp
from fastlrp.backends import numba_backend as nb
from fastlrp.backends.base import BackendError
from fastlrp.graph import GraphBuilder
from fastlrp.rules import AlphaBeta, Norm, ZBox, ZPlus
from _nets import RTOL_LAYER, branchy_cnn, explain_vs_reference, rel_err, signed


def test_nonnegative_input_skips_the_negative_half():
    rng = np.random.default_rng(2)
    bld = GraphBuilder((3, 6, 6))
    h = bld.conv(bld.input, signed(rng, (4, 3, 3, 3)), name="c1")
    h = bld.activation(h, "relu")
    h = bld.maxpool(h, 2)
    h = bld.conv(h, signed(rng, (4, 4, 1, 1)), name="c2")
    g = bld.build()
    assert not g.known_nonnegative("input") and g.known_nonnegative("maxpool_0")
    be = nb.NumbaBackend()
    signed_op = be.prepare(g, g["c1"], ZPlus())
    nonneg = be.prepare(g, g["c2"], AlphaBeta(2, 1))
    assert signed_op.split == 1 and signed_op.Wf.shape[2] == 2 * 3 * 9
    assert nonneg.split == 0 and nonneg.Wf.shape[2] == 4 and nonneg.WbT.shape[1] == 4


def test_chunked_batches_match(monkeypatch):
    """Batches split into several im2col chunks give the same result as one chunk."""
    rng = np.random.default_rng(3)
    bld = GraphBuilder((4, 9, 8))
    bld.conv(bld.input, signed(rng, (6, 2, 3, 2)), signed(rng, 6), stride=(2, 1), padding=((0, 1), (2, 0)),
             dilation=(1, 2), groups=2)
    g = bld.build()
    comp = fastlrp.Composite({"linear": AlphaBeta(2, 1)})
    x = signed(rng, (5, 4, 9, 8))
    R = signed(rng, (5,) + g.output_shape)
    whole = fastlrp.Explainer(g, comp, backend="numba").explain(x, target=R)
    monkeypatch.setattr(nb, "_CHUNK_FLOATS", 200)
    ex = fastlrp.Explainer(g, comp, backend="numba")
    assert ex.plan.ops[g.output].chunk < 5
    got, want = explain_vs_reference("numba", g, comp, x, target=R)
    assert rel_err(got, want) < RTOL_LAYER
    np.testing.assert_allclose(ex.explain(x, target=R), whole, rtol=1e-6, atol=1e-7)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(12)
    g = branchy_cnn(rng, "max")
    x = signed(rng, (5, *g.input_shape))
    before = numba.get_num_threads()
    results = []
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            results.append(fastlrp.Explainer(g, "epsilon_gamma_box(low=-3, high=3)", backend="numba")
                           .explain(x, target="all"))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6 * np.abs(results[0]).max())


def test_backend_name_and_errors():
    be = fastlrp.get_backend("numba")
    assert be.name == "numba" and be.dtype == np.float32
    bld = GraphBuilder((4,))
    bld.dense(bld.input, np.ones((2, 4)), name="fc")
    g = bld.build()
    with pytest.raises(BackendError, match="fc"):
        be.prepare(g, g["fc"], Norm())
    with pytest.raises(BackendError, match="fc"):
        be.prepare(g, g["fc"], ZBox(np.zeros(3), 1.0))
