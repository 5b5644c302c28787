"""Attention ops (matmul of two activations, softmax inside a model), their rules
(UniformEpsilon, GateEpsilon, Taylor), the AttnLRP / CP-LRP composites, and the
torch import of attention (the explicit q k^T form, F.scaled_dot_product_attention,
nn.MultiheadAttention, einsum, torch.export).

The rules' references are checked against the rules written out elementwise
(np.einsum over explicit indices) and, for the Gradient x Input identities they
satisfy at epsilon 0, against torch autograd. Every backend against the reference:
tests/test_backend_matrix.py (cases "matmul", "softmax", activation "gelu_tanh").
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp.composites import AttnLRP, CPLRP
from fastlrp.graph import GraphBuilder
from fastlrp.rules import Epsilon, Gamma, GateEpsilon, Pass, RuleError, Taylor, UniformEpsilon
from _nets import BACKENDS, RTOL_NET, attention_block, rel_err

RNG = np.random.default_rng(12)


# ----------------------------------------------------------------------------- references
def _matmul_graph(sa, sb, transpose_b=False, softmax_a=False):
    """A graph computing matmul(a, b) from one input holding a and b side by side (flattened)."""
    na, nb = int(np.prod(sa)), int(np.prod(sb))
    gb = GraphBuilder((na + nb,))
    a = gb.reshape(gb.add_node("slice", gb.input, {"axis": 0, "start": 0, "stop": na}), sa)
    if softmax_a:
        a = gb.add_node("softmax", a, {"axis": -1})
    b = gb.reshape(gb.add_node("slice", gb.input, {"axis": 0, "start": na, "stop": na + nb}), sb)
    gb.add_node("matmul", [a, b], {"transpose_b": transpose_b}, name="op")
    return gb.build(output="op")


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("rule", [UniformEpsilon(0.0), UniformEpsilon(0.3), GateEpsilon(0, 0.1), GateEpsilon(1, 0.0)])
def test_matmul_rules_by_definition(rule, transpose_b):
    """R_a[..ik] = sum_j a_ik b_kj R_ij / (c s(z_ij)), c = 2 (uniform) or 1 (the kept operand)."""
    sa, sb = (2, 3, 4), ((1, 5, 4) if transpose_b else (1, 4, 5))  # b broadcast over a's leading axis
    graph = _matmul_graph(sa, sb, transpose_b)
    x = RNG.standard_normal((2, graph.input_shape[0]))
    R = RNG.standard_normal((2, 2, 3, 5))
    got = fastlrp.Explainer(graph, fastlrp.Composite(names={"op": rule}), backend="reference").explain(x, target=R)
    a = x[:, :24].reshape((2,) + sa)
    b = x[:, 24:].reshape((2,) + sb)
    bb = np.swapaxes(b, -1, -2) if transpose_b else b
    z = np.einsum("nhik,nxkj->nhij", a, bb)
    s = z + np.where(z >= 0, rule.epsilon, -rule.epsilon)
    c = 2.0 if rule.kind == "uniform_epsilon" else 1.0
    Ra = np.einsum("nhik,nxkj,nhij->nhik", a, bb, R / (c * s))
    Rb = np.einsum("nhik,nxkj,nhij->nxkj", a, bb, R / (c * s))
    if rule.kind == "gate_epsilon":
        (Ra, Rb) = (np.zeros_like(Ra), Rb) if rule.gate == 0 else (Ra, np.zeros_like(Rb))
    Rb = np.swapaxes(Rb, -1, -2) if transpose_b else Rb
    np.testing.assert_allclose(got, np.concatenate([Ra.reshape(2, -1), Rb.reshape(2, -1)], axis=1), rtol=1e-12,
                               atol=1e-12)


def test_rules_are_gradient_times_input_at_epsilon_zero():
    """At epsilon 0: UniformEpsilon is half of Gradient x Input of the product per operand;
    Taylor on a softmax is Gradient x Input (x * J^T [R / y]); both with the gradient from
    torch autograd, seeded with R / y."""
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 4, 6))
    R = RNG.standard_normal((2, 4, 6))
    gb = GraphBuilder((4, 6))
    gb.add_node("softmax", gb.input, {"axis": -1}, name="op")
    got = fastlrp.Explainer(gb.build(), fastlrp.Composite(names={"op": Taylor()}), backend="reference").explain(
        x, target=R)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.softmax(xt, -1)
    y.backward(torch.tensor(R) / y.detach())
    np.testing.assert_allclose(got, x * xt.grad.numpy(), rtol=1e-10, atol=1e-12)

    graph = _matmul_graph((3, 4), (4, 2))
    xin = RNG.standard_normal((2, 20))
    R = RNG.standard_normal((2, 3, 2))
    got = fastlrp.Explainer(graph, fastlrp.Composite(names={"op": UniformEpsilon(0.0)}), backend="reference").explain(
        xin, target=R)
    xt = torch.tensor(xin, requires_grad=True)
    z = xt[:, :12].reshape(2, 3, 4) @ xt[:, 12:].reshape(2, 4, 2)
    z.backward(torch.tensor(R) / z.detach())
    np.testing.assert_allclose(got, xin * xt.grad.numpy() / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_silenced_operands_keep_no_context(backend):
    """CP-LRP holds the attention weights constant: the plan sends no relevance to them, so
    the scores, their scale, the softmax and the q and k projections keep no forward
    context (their memory is freed after the forward pass) and run no relevance pass; the
    report still lists them, with zero relevance. AttnLRP silences only constants. The
    relevance is what the node ops give without the silencing: against a plan that
    computes every edge (silent_inputs ignored)."""
    from fastlrp.backends.plan import NodePlan

    graph = attention_block(np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal((3,) + graph.input_shape)
    cp = fastlrp.Explainer(graph, "cp_lrp", backend=backend)
    plan = NodePlan(cp.backend, graph, graph.live_nodes(), cp.rules)
    silent = {"scores", "softmax", "q_proj", "k_proj"}
    assert silent <= plan.silent and "v_proj" not in plan.silent
    out, ctxs = plan.forward(x.astype(cp.dtype))
    assert all(ctxs[n] is None for n in plan.silent)
    R, rep = cp.explain(x, return_layers=True)
    assert all(np.all(rep.relevance_out[n] == 0) and np.all(rep.relevance_in[n] == 0) for n in silent)
    full = NodePlan(cp.backend, graph, graph.live_nodes(), cp.rules)
    full.silent, full.sends = set(), {n.name: [True] * len(n.inputs) for n in graph.live_nodes()}
    seed = np.zeros((3,) + tuple(graph[graph.output].shape))
    seed[np.arange(3), np.asarray(out).reshape(3, -1).argmax(1)] = np.asarray(out).reshape(3, -1).max(1)
    want = full.relevance(full.forward(x.astype(cp.dtype))[1], seed.astype(cp.dtype))
    assert rel_err(R, np.asarray(want).reshape(R.shape)) < 1e-12
    att = fastlrp.Explainer(graph, "attnlrp", backend=backend)  # (constants, e.g. the scale, are gates)
    assert all(graph[n].op == "const" for n in NodePlan(att.backend, graph, graph.live_nodes(), att.rules).silent)


def test_gate_epsilon_finds_the_attention_weights():
    graph = _matmul_graph((3, 4), (4, 2), softmax_a=True)
    comp = fastlrp.Composite(names={"op": GateEpsilon()})
    x = RNG.standard_normal((2, 20))
    R = fastlrp.Explainer(graph, comp, backend="reference").explain(x, target=RNG.standard_normal((2, 3, 2)))
    assert np.all(R[:, :12] == 0) and np.any(R[:, 12:] != 0)  # the weights held constant get nothing
    with pytest.raises(RuleError, match="cannot tell which operand"):
        fastlrp.Explainer(_matmul_graph((3, 4), (4, 2)), comp, backend="reference")


def test_softmax_and_matmul_shape_errors():
    gb = GraphBuilder((3, 4))
    gb.add_node("matmul", [gb.input, gb.input], name="op")
    with pytest.raises(fastlrp.GraphError, match="inner sizes differ"):
        gb.build()
    gb = GraphBuilder((3, 4))
    gb.add_node("softmax", gb.input, {"axis": 2}, name="op")
    with pytest.raises(fastlrp.GraphError, match="axis 2 does not fit"):
        gb.build()


# ----------------------------------------------------------------------------- composites, conservation
def test_composites_resolve():
    graph = attention_block(np.random.default_rng(0))
    attn = AttnLRP().resolve(graph)
    cp = CPLRP(gamma=0.25).resolve(graph)
    assert attn["scores"] == attn["values"] == UniformEpsilon(1e-6)
    assert attn["softmax"] == Taylor() and attn["q_proj"] == Epsilon(1e-6)
    assert cp["values"] == GateEpsilon(0, 1e-6) and cp["scores"] == UniformEpsilon(1e-6)
    assert cp["q_proj"] == Gamma(0.25, 1e-6)
    layer = [n.name for n in graph if n.op == "layernorm"][0]
    assert cp[layer] == Epsilon(1e-6)
    assert fastlrp.composites.get_composite("cp_lrp(epsilon=0, gamma=0.5)").resolve(graph)["head"] == Gamma(0.5, 0.0)
    got = CPLRP(layer_map={"dense": Gamma(1.0)}, names={"values": UniformEpsilon(0.0), "softmax": Pass()}).resolve(graph)
    assert got["q_proj"] == Gamma(1.0) and got["values"] == UniformEpsilon(0.0) and got["softmax"] == Pass()


@pytest.mark.parametrize("composite", ["attnlrp(epsilon=0)", "cp_lrp(epsilon=0)"])
def test_conservation_per_node(composite):
    """Without biases, at epsilon 0, every node conserves except the softmax (Taylor drops
    the offset) and the graph's LayerNorm, dense and matmul nodes pass on exactly what
    arrives (return_layers)."""
    graph = attention_block(np.random.default_rng(1), bias=False)
    x = RNG.standard_normal((3,) + graph.input_shape)
    _, report = fastlrp.Explainer(graph, composite, backend="reference").explain(x, return_layers=True)
    checked = 0
    for name, op in zip(report.names, report.ops):
        if op in ("softmax", "const", "input"):
            continue
        out, inn = report.relevance_out[name], report.relevance_in[name]
        np.testing.assert_allclose(inn, out, rtol=1e-9, atol=1e-9 * np.abs(out).max(), err_msg=name)
        checked += 1
    assert checked >= 10
    if composite.startswith("cp"):  # relevance reaches the values only
        assert np.all(report.relevance_out["softmax"] == 0)


@pytest.mark.filterwarnings("ignore:fastlrp cuda.*runs on the host:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp(gamma=0.25)"])
def test_attention_block_on_every_backend(backend, composite):
    graph = attention_block(np.random.default_rng(2))
    x = RNG.standard_normal((4,) + graph.input_shape).astype(np.float32)
    want = fastlrp.Explainer(graph, composite, backend="reference").explain(x.astype(np.float64))
    got = fastlrp.Explainer(graph, composite, backend=backend).explain(x)
    assert got.dtype == np.float32 and rel_err(got, want) < RTOL_NET


# ----------------------------------------------------------------------------- torch import
torch = pytest.importorskip("torch")
F = torch.nn.functional


class Explicit(torch.nn.Module):
    """timm-style attention written out: qkv, heads, q @ k^T * scale, softmax, @ v."""

    def __init__(self, D=8, H=2, form="explicit", mask=None, causal=False, approximate="none"):
        super().__init__()
        self.H, self.form, self.causal = H, form, causal
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.proj = torch.nn.Linear(D, D)
        self.act = torch.nn.GELU(approximate=approximate)
        self.head = torch.nn.Linear(D, 3)
        self.register_buffer("mask", mask)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.H, D // self.H).transpose(1, 2) for t in (q, k, v))
        if self.form == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal)
        elif self.form == "einsum":
            a = torch.einsum("bhqd,bhkd->bhqk", q, k) * (D // self.H) ** -0.5
            o = torch.einsum("bhqk,bhkd->bhqd", a.softmax(dim=-1), v)
        else:
            a = (q @ k.transpose(-2, -1)) * (D // self.H) ** -0.5
            o = torch.matmul(a.softmax(dim=-1), v)
        o = self.proj(o.transpose(1, 2).reshape(B, T, D))
        return self.head(self.act(x + o)[:, 0])


class MHA(torch.nn.Module):
    def __init__(self, D=8, H=2, mask=None, causal=False):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(D, H, batch_first=True)
        self.head = torch.nn.Linear(D, 3)
        self.causal = causal
        self.register_buffer("mask", mask)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False, attn_mask=self.mask, is_causal=self.causal)
        return self.head((x + y)[:, 0])


def _check_import(model, exported=False, T=5, D=8):
    torch.manual_seed(3)
    model = model.eval().double()
    x = torch.randn(2, T, D, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).numpy()
    graph = fastlrp.from_torch(torch.export.export(model, (x,)) if exported else model, x)
    ex = fastlrp.Explainer(graph, "attnlrp(epsilon=0)", backend="reference")
    np.testing.assert_allclose(ex.forward(x.numpy()), y, rtol=1e-10, atol=1e-12)
    return graph, x.numpy()


CAUSAL = np.triu(np.ones((5, 5), bool), 1)


@pytest.mark.parametrize("model", [
    pytest.param(lambda: Explicit(), id="explicit"),
    pytest.param(lambda: Explicit(form="einsum", approximate="tanh"), id="einsum-gelu-tanh"),
    pytest.param(lambda: Explicit(form="sdpa"), id="sdpa"),
    pytest.param(lambda: Explicit(form="sdpa", causal=True), id="sdpa-causal"),
    pytest.param(lambda: Explicit(form="sdpa", mask=torch.randn(5, 5, dtype=torch.float64)), id="sdpa-float-mask"),
    pytest.param(lambda: MHA(), id="mha"),
    pytest.param(lambda: MHA(mask=torch.tensor(CAUSAL)), id="mha-bool-mask"),
])
def test_torch_attention_forms(model):
    """Each form imports to two matmul nodes and one softmax, computes the model's function
    (float64), and explains on a float32 backend as the reference does."""
    graph, x = _check_import(model())
    assert sum(n.op == "matmul" for n in graph) == 2 and sum(n.op == "softmax" for n in graph) == 1
    R, report = fastlrp.Explainer(graph, "cp_lrp", backend="reference").explain(x, return_layers=True)
    assert np.isfinite(R).all() and np.abs(R).max() > 0
    got = fastlrp.Explainer(graph, "cp_lrp", backend="cpu" if fastlrp._ext.core is not None else "numba").explain(
        x.astype(np.float32))
    assert rel_err(got, R) < RTOL_NET


@pytest.mark.parametrize("model", [lambda: Explicit(), lambda: Explicit(form="sdpa")], ids=["explicit", "sdpa"])
def test_torch_export_attention(model):
    graph, x = _check_import(model(), exported=True)
    assert sum(n.op == "matmul" for n in graph) == 2


def test_unsupported_attention_variants_are_named():
    mha = MHA()
    mha.attn = torch.nn.MultiheadAttention(8, 2, batch_first=False)
    with pytest.raises(fastlrp.UnsupportedLayerError, match="batch_first=False"):
        fastlrp.from_torch(mha.eval(), torch.randn(2, 5, 8))
