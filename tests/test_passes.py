"""The IR passes (fastlrp.passes) on small hand-built graphs, against the float64 reference.

Every pass must leave the model's output unchanged (within 1e-12 in float64); passes that
do not change what an LRP rule sees (pruning, routing clean-ups, merging two BatchNorms,
which relevance passes through) must also leave the relevance unchanged. Folded weights
are checked against the affine map of the unfolded layers, probed with unit inputs.
"""

import warnings

import numpy as np
import pytest

import fastlrp
from fastlrp import passes
from fastlrp.graph import Graph, GraphBuilder, GraphError

COMPOSITES = ["epsilon_plus", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box(low=-3, high=3)"]


def rng(seed=0):
    return np.random.default_rng(seed)


def forward(graph, x):
    return np.asarray(fastlrp.Explainer(graph, "epsilon_plus", backend="reference").forward(x))


def relevance(graph, composite, x):
    return np.asarray(fastlrp.Explainer(graph, composite, backend="reference").explain(x))


def bn_params(c, seed):
    r = rng(seed)
    return r.uniform(0.5, 1.5, c) * r.choice([-1.0, 1.0], c), r.normal(size=c)


def conv_w(r, cout, cin, k):
    return r.normal(size=(cout, cin, k, k)) / np.sqrt(cin * k * k)


def no_warnings(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*a, **kw)


def same_output(g0, g1, x):
    np.testing.assert_allclose(forward(g1, x), forward(g0, x), rtol=1e-12, atol=1e-12)


def affine_probe(graph, shape):
    """(W, b) of a graph that is affine in its input: b = f(0), W[:, j] = f(e_j) - b."""
    n = int(np.prod(shape))
    eye = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape((n + 1, *shape))
    out = forward(graph, eye).reshape(n + 1, -1)
    return (out[1:] - out[0]).T, out[0]


def ops(graph):
    return [n.op for n in graph]


# ------------------------------------------------------------------------------------------------
# BatchNorm folding


def test_batchnorm_after_conv_and_after_dense_folds_into_the_layer():
    r = rng(1)
    b = GraphBuilder((3, 6, 6))
    h = b.conv(b.input, conv_w(r, 4, 3, 3), None, padding=1, name="c1")
    h = b.batchnorm(h, *bn_params(4, 2), name="bn1", source="bn1 (test)")
    h = b.flatten(b.activation(h, "relu"))
    h = b.dense(h, r.normal(size=(5, 144)) / 12, r.normal(size=5), name="fc")
    b.batchnorm(h, *bn_params(5, 3), name="bn2")
    g = b.build()
    x = r.normal(size=(4, 3, 6, 6))

    f = no_warnings(passes.fold_batchnorms, g)
    assert "batchnorm" not in ops(f)
    assert f.output == "fc"  # the output BatchNorm folds into the dense layer, which keeps its name
    assert "bn1 (test) folded" in f["c1"].source and f.meta["folded_batchnorm"] == ["bn1 (test)", "bn2"]
    same_output(g, f, x)
    # the folded dense layer is the affine map dense -> BatchNorm
    b2 = GraphBuilder((144,))
    b2.batchnorm(b2.dense(b2.input, g["fc"].params["weight"], g["fc"].params["bias"]), *bn_params(5, 3))
    W, bias = affine_probe(b2.build(), (144,))
    np.testing.assert_allclose(f["fc"].params["weight"], W, atol=1e-12)
    np.testing.assert_allclose(f["fc"].params["bias"], bias, atol=1e-12)
    # the conv had no bias: the folded one has the shift as its bias
    np.testing.assert_array_equal(f["c1"].params["bias"], g["bn1"].params["shift"])


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_batchnorm_before_unpadded_conv_and_dense_folds_into_its_input_side(groups, stride):
    r = rng(4)
    b = GraphBuilder((4, 7, 7))
    h = b.batchnorm(b.input, *bn_params(4, 5), name="bn0")
    h = b.conv(h, conv_w(r, 6, 4 // groups, 3), r.normal(size=6), stride=stride, groups=groups, name="c1")
    h = b.activation(h, "relu")
    h = b.flatten(h)
    n = 6 * (5 if stride == 1 else 3) ** 2
    h = b.batchnorm(h, *bn_params(n, 6), name="bn1")
    b.dense(h, r.normal(size=(3, n)) / np.sqrt(n), None, name="fc")
    g = b.build()
    x = r.normal(size=(3, 4, 7, 7))

    f = no_warnings(passes.fold_batchnorms, g)
    assert ops(f) == ["input", "conv", "activation", "reshape", "dense"]
    assert [n.name for n in f.parametric()] == ["c1", "fc"]
    assert f["c1"].source.startswith("bn0 folded")
    same_output(g, f, x)
    # the folded conv is the affine map BatchNorm -> conv
    sub = Graph(g.nodes[:3], output="c1")
    W, bias = affine_probe(sub, (4, 7, 7))
    W_f, b_f = affine_probe(Graph(f.nodes[:2], output="c1"), (4, 7, 7))
    np.testing.assert_allclose(W_f, W, atol=1e-12)
    np.testing.assert_allclose(b_f, bias, atol=1e-12)


def test_batchnorm_before_padded_conv_is_kept_because_folding_is_not_exact():
    r = rng(7)
    b = GraphBuilder((3, 5, 5))
    h = b.activation(b.input, "relu")
    s, t = bn_params(3, 8)
    h = b.batchnorm(h, s, t, name="bn", source="features.1 (BatchNorm2d)")
    w, bias = conv_w(r, 4, 3, 3), r.normal(size=4)
    b.conv(h, w, bias, padding=1, name="conv")
    g = b.build()
    x = r.normal(size=(2, 3, 5, 5))

    with pytest.warns(UserWarning, match=r"BatchNorm 'bn' \(features.1 \(BatchNorm2d\)\) could not be folded.*"
                                         r"zero-pads its input"):
        f = passes.fold_batchnorms(g)
    assert ops(f) == ops(g) and f.meta["unfolded_batchnorm"] == ["features.1 (BatchNorm2d)"]
    same_output(g, f, x)
    for comp in COMPOSITES:
        np.testing.assert_array_equal(relevance(f, comp, x), relevance(g, comp, x))
    # what folding would give: the borders differ, since the padding is not shifted
    b2 = GraphBuilder((3, 5, 5))
    b2.conv(b2.activation(b2.input, "relu"), w * s[None, :, None, None],
            bias + (w * t[None, :, None, None]).sum(axis=(1, 2, 3)), padding=1)
    diff = np.abs(forward(b2.build(), x) - forward(g, x))
    assert diff[:, :, 2, 2].max() < 1e-12 and diff[:, :, 0, :].max() > 1e-3


def test_batchnorm_whose_layer_is_read_twice_is_kept():
    r = rng(9)
    b = GraphBuilder((2, 4, 4))
    c = b.conv(b.input, conv_w(r, 2, 2, 3), r.normal(size=2), padding=1, name="c")
    h = b.batchnorm(c, *bn_params(2, 10), name="bn")
    b.flatten(b.add(h, c))
    g = b.build()
    with pytest.warns(UserWarning, match="'c' .* is also read by other nodes, and it feeds node 'add_0'"):
        f = passes.fold_batchnorms(g)
    assert "batchnorm" in ops(f)
    same_output(g, f, r.normal(size=(2, 2, 4, 4)))


def test_batchnorm_after_batchnorm_is_merged():
    r = rng(11)
    b = GraphBuilder((3, 5, 5))
    h = b.activation(b.input, "relu")
    h = b.batchnorm(h, *bn_params(3, 12), name="bn_a", source="a")
    h = b.batchnorm(h, *bn_params(3, 13), name="bn_b", source="b")
    b.conv(h, conv_w(r, 4, 3, 3), r.normal(size=4), padding=1, name="conv")
    g = b.build()
    x = r.normal(size=(3, 3, 5, 5))
    with pytest.warns(UserWarning) as rec:
        f = passes.fold_batchnorms(g)
    assert len(rec) == 1 and "'bn_a'" in str(rec[0].message)
    assert ops(f) == ["input", "activation", "batchnorm", "conv"] and f["bn_a"].source == "a + b"
    assert f.meta["unfolded_batchnorm"] == ["a", "b"]
    same_output(g, f, x)
    for comp in COMPOSITES:  # a BatchNorm passes relevance through: one or two of them, the same
        np.testing.assert_allclose(relevance(f, comp, x), relevance(g, comp, x), rtol=1e-12, atol=1e-12)
    # two BatchNorms after a conv both fold into it, one after the other
    b2 = GraphBuilder((3, 5, 5))
    h = b2.conv(b2.input, conv_w(r, 4, 3, 3), None, name="conv")
    b2.flatten(b2.batchnorm(b2.batchnorm(h, *bn_params(4, 14)), *bn_params(4, 15)))
    g2 = b2.build()
    f2 = no_warnings(passes.fold_batchnorms, g2)
    assert ops(f2) == ["input", "conv", "reshape"]
    same_output(g2, f2, x)


# ------------------------------------------------------------------------------------------------
# output activation, dead nodes, softmax checks


def mlp(last=None, seed=20):
    r = rng(seed)
    b = GraphBuilder((6,))
    h = b.dense(b.input, r.normal(size=(5, 6)), r.normal(size=5), name="fc1")
    h = b.dense(b.activation(h, "relu"), r.normal(size=(4, 5)), r.normal(size=4), name="fc2")
    if last is not None:
        b.activation(h, last, name="out", source="out (Softmax)")
    return b.build()


@pytest.mark.parametrize("kind", ["softmax", "log_softmax", "sigmoid"])
def test_output_activation_is_stripped_with_a_warning(kind):
    g = mlp(kind)
    x = rng(21).normal(size=(5, 6))
    with pytest.warns(UserWarning, match=f"the output {kind} 'out' .* is stripped: fastlrp explains the logits"):
        f = passes.optimize(g)
    assert f.output == "fc2" and "out" not in [n.name for n in f]
    same_output(Graph(g.nodes, output="fc2"), f, x)
    k = no_warnings(passes.optimize, g, keep_output_activation=True)
    assert k.output == "out" and k["out"].attrs["kind"] == kind
    same_output(g, k, x)


def test_other_output_activations_are_kept():
    g = mlp("tanh")
    f = no_warnings(passes.optimize, g)
    assert f.output == "out" and f.fingerprint() == g.fingerprint()


def test_softmax_inside_the_model_is_an_error():
    b = GraphBuilder((6,))
    h = b.activation(b.dense(b.input, np.eye(6)), "softmax", name="sm")
    b.dense(h, np.ones((2, 6)))
    with pytest.raises(GraphError, match="unsupported softmax at 'sm'.*only supported at the output"):
        passes.optimize(b.build())


def test_dead_nodes_are_pruned():
    r = rng(30)
    b = GraphBuilder((2, 6, 6))
    c = b.conv(b.input, conv_w(r, 3, 2, 3), r.normal(size=3), name="c")
    b.maxpool(c, 2, name="dead_pool")
    b.batchnorm(c, *bn_params(3, 31), name="dead_bn")  # dead: neither folded nor warned about
    out = b.dense(b.flatten(b.activation(c, "relu")), r.normal(size=(2, 48)), name="fc")
    b.activation(out, "relu", name="dead_act")
    g = b.build(output="fc")
    x = r.normal(size=(2, 2, 6, 6))
    f = no_warnings(passes.optimize, g)
    assert [n.name for n in f] == ["input", "c", "activation_0", "reshape_0", "fc"]
    for comp in COMPOSITES:
        np.testing.assert_array_equal(relevance(f, comp, x), relevance(g, comp, x))


# ------------------------------------------------------------------------------------------------
# routing clean-ups


def test_simplify_removes_identities_and_merges_routing_chains():
    r = rng(40)
    b = GraphBuilder((2, 4, 5))
    h = b.conv(b.input, conv_w(r, 3, 2, 3), r.normal(size=3), padding=1, name="c")
    h = b.activation(h, "identity", name="dropout")
    h = b.permute(h, (1, 2, 0), name="p1")
    h = b.permute(h, (2, 0, 1), name="p2")  # p2(p1) is the identity
    h = b.concat([h], name="cat1")
    h = b.activation(h, "relu", name="relu")
    h = b.reshape(h, (3, 20), name="r1")
    h = b.reshape(h, (60,), name="r2")
    h = b.permute(b.reshape(h, (6, 10), name="r3"), (1, 0), name="p3")
    h = b.permute(h, (1, 0), name="p4")  # p4(p3) is the identity: the output moves to r3
    g = b.build()
    x = r.normal(size=(3, 2, 4, 5))
    f = no_warnings(passes.simplify, g)
    assert [(n.name, n.inputs) for n in f] == [("input", []), ("c", ["input"]), ("relu", ["c"]),
                                               ("r3", ["relu"])]
    assert f.output == "r3"
    same_output(g, f, x)
    for comp in COMPOSITES:
        np.testing.assert_array_equal(relevance(f, comp, x), relevance(g, comp, x))


def test_permute_chain_is_composed():
    b = GraphBuilder((2, 3, 4))
    b.permute(b.permute(b.input, (1, 2, 0), name="p1"), (0, 2, 1), name="p2")
    b.flatten(b.add("p2", "p2"))
    g = b.build()
    f = passes.simplify(g)
    assert [n.name for n in f] == ["input", "p2", "add_0", "reshape_0"] and f["p2"].inputs == ["input"]
    same_output(g, f, rng(41).normal(size=(2, 2, 3, 4)))


def test_identity_model_keeps_its_node():
    b = GraphBuilder((4,))
    b.activation(b.input, "identity", name="output")
    g = b.build()
    f = passes.optimize(g)
    assert [n.name for n in f] == ["input", "output"]


# ------------------------------------------------------------------------------------------------
# the entry point


def resnet_like():
    r = rng(50)
    b = GraphBuilder((3, 6, 6))
    h = b.conv(b.input, conv_w(r, 4, 3, 3), None, padding=1, name="conv1")
    h = b.activation(b.batchnorm(h, *bn_params(4, 51), name="bn1"), "relu", name="relu1")
    y = b.conv(h, conv_w(r, 4, 4, 3), None, padding=1, name="conv2")
    y = b.batchnorm(y, *bn_params(4, 52), name="bn2")
    h = b.activation(b.add(h, y, name="add"), "relu")
    h = b.reshape(b.adaptive_avgpool(h, 1), (4,), name="squeeze")
    h = b.flatten(h, name="flatten")
    h = b.activation(h, "identity", name="dropout")
    b.activation(b.dense(h, r.normal(size=(3, 4)), r.normal(size=3), name="fc"), "softmax", name="softmax")
    return b.build()


def test_optimize_runs_every_pass_and_leaves_its_argument_alone():
    g = resnet_like()
    before = [(n.name, list(n.inputs), {k: v.copy() for k, v in n.params.items()}) for n in g]
    meta = dict(g.meta)
    x = rng(53).normal(size=(4, 3, 6, 6))
    with pytest.warns(UserWarning, match="output softmax") as rec:
        f = passes.optimize(g)
    assert len(rec) == 1
    assert rec[0].filename == __file__  # the warning points at the caller, not into fastlrp
    assert [n.name for n in f] == ["input", "conv1", "relu1", "conv2", "add", "activation_0",
                                   "adaptive_avgpool_0", "flatten", "fc"]
    assert f.meta["folded_batchnorm"] == ["bn1", "bn2"]
    same_output(Graph(g.nodes, output="fc"), f, x)
    # the argument is unchanged
    assert g.meta == meta and len(g) == len(before)
    for n, (name, inputs, params) in zip(g, before):
        assert n.name == name and n.inputs == inputs
        for k, v in params.items():
            np.testing.assert_array_equal(n.params[k], v)
    # running it again changes nothing
    again = no_warnings(passes.optimize, f)
    assert again.fingerprint() == f.fingerprint() and again.meta == f.meta


def test_optimize_preserves_the_arithmetic_of_folding_bitwise():
    """The folded parameters are exactly ``W * s`` and ``b * s + t`` in float64."""
    g = resnet_like()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = passes.optimize(g)
    s, t = g["bn1"].params["scale"], g["bn1"].params["shift"]
    np.testing.assert_array_equal(f["conv1"].params["weight"], g["conv1"].params["weight"] * s[:, None, None, None])
    np.testing.assert_array_equal(f["conv1"].params["bias"], 0.0 + t)


# ------------------------------------------------------------------------------------------------
# slices first


def _token_readout(r, T=6, D=5):
    """Two pre-norm blocks on tokens (T, D) (a token mixer: dense over the token axis,
    then an MLP on features), a final LayerNorm and the readout of token 0 (a ViT's head)."""
    gb = GraphBuilder((T, D))
    x = gb.input
    for b in range(2):
        h = gb.add_node("layernorm", x, {"axes": (-1,), "eps": 1e-5},
                        {"weight": r.standard_normal((1, D)), "bias": r.standard_normal((1, D))}, name=f"ln{b}")
        mix = gb.permute(gb.dense(gb.permute(h, (1, 0)), r.standard_normal((T, T)), r.standard_normal(T)), (1, 0))
        x = gb.add(x, mix, name=f"res{b}a")
        h = gb.activation(gb.dense(x, r.standard_normal((2 * D, D)), r.standard_normal(2 * D)), "gelu")
        x = gb.add(x, gb.dense(h, r.standard_normal((D, 2 * D)), r.standard_normal(D), name=f"fc{b}"), name=f"res{b}b")
    x = gb.add_node("layernorm", x, {"axes": (-1,), "eps": 1e-5},
                    {"weight": r.standard_normal((1, D)), "bias": r.standard_normal((1, D))}, name="final_ln")
    x = gb.reshape(gb.add_node("slice", x, {"axis": 0, "start": 0, "stop": 1}), (D,))
    gb.dense(x, r.standard_normal((3, D)), r.standard_normal(3), name="head")
    return gb.build()


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp", "epsilon_plus"])
def test_slice_moves_above_token_wise_nodes_with_the_same_relevance(composite):
    """The readout of token 0 moves above the final LayerNorm, the last MLP and the last
    residual sums (each position alone) and stops at the token mixer (a dense layer over
    the token axis) and where another reader needs all tokens; output and relevance are
    those of the graph without the pass, and the moved-over nodes keep their names."""
    g0 = _token_readout(rng(3))
    g1 = passes.slice_early(g0)
    assert g1 is not g0 and passes.slice_early(g1) is g1
    for name in ("final_ln", "res1b", "fc1"):
        assert g1[name].shape[0] == 1 and g0[name].shape[0] == 6
    assert g1["ln1"].shape[0] == 6  # read by the token mixer, which needs every token
    x = rng(4).standard_normal((4, 6, 5))
    same_output(g0, g1, x)
    np.testing.assert_allclose(relevance(g1, composite, x), relevance(g0, composite, x), rtol=1e-10, atol=1e-12)
    assert passes.optimize(g0)["fc1"].shape == (1, 5)


def test_slice_along_a_normalised_or_feature_axis_stays():
    """A slice of the features (the axis a dense layer or a LayerNorm works on) does not
    commute: the graph is returned unchanged."""
    gb = GraphBuilder((4, 6))
    h = gb.add_node("layernorm", gb.input, {"axes": (-1,), "eps": 1e-5},
                    {"weight": np.ones((1, 6)), "bias": np.zeros((1, 6))})
    h = gb.dense(h, rng(5).standard_normal((6, 6)), None)
    gb.add_node("slice", h, {"axis": 1, "start": 0, "stop": 2})
    g = gb.build()
    assert passes.slice_early(g) is g
