"""Tests for fastlrp.importers.torch.from_torch: the imported graph computes what torch computes."""

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import fastlrp  # noqa: E402
from fastlrp.graph import GraphError  # noqa: E402
from fastlrp.importers.torch import UnsupportedLayerError, from_torch  # noqa: E402
from _torch_helpers import randomize  # noqa: E402


# ------------------------------------------------------------------------------------------------
# helpers


def graph_forward(graph, x):
    """Forward pass of an imported graph with the package's float64 reference backend."""
    import fastlrp

    return np.asarray(fastlrp.Explainer(graph, "epsilon_plus", backend="reference").forward(np.asarray(x)))


def check_forward(model, x, atol=1e-10, **kw):
    model = randomize(model)
    x = x.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = from_torch(model, x, **kw)
    with torch.no_grad():
        ref = model(x).numpy()
    got = graph_forward(graph, x.numpy())
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=atol)
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


# ------------------------------------------------------------------------------------------------
# models


class Residual(nn.Module):
    """Residuals written with +, torch.add and +=, functional activations of every spelling."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv4 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = self.conv2(x).relu()
        x = x + y
        y = torch.relu(self.conv3(x))
        x = torch.add(x, y)
        y = F.leaky_relu(self.conv4(x), 0.2)
        x += y
        x = x.view(x.size(0), -1)
        return self.fc(x)


class Branches(nn.Module):
    """torch.cat branches, reshape with x.shape[0], torch.flatten, nn.Flatten."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=(1, 1)))
        self.c = nn.Conv2d(3, 2, 5, padding="same")
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(8 * 4 * 4, 10)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        h = self.pool(F.relu(h))
        u = self.fc1(torch.flatten(h, 1))
        v = self.fc1(h.reshape(h.shape[0], -1))  # shared module called twice
        w = torch.cat((u + v, self.fc1(self.flat(h))), -1)
        return self.fc2(F.relu(w))


class ConvVariants(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, stride=2, padding=(1, 2), dilation=(1, 2))
        self.c2 = nn.Conv2d(8, 8, 3, groups=4, padding="same", dilation=2)
        self.c3 = nn.Conv2d(8, 6, (2, 4), padding="same")  # even kernel: asymmetric padding
        self.c4 = nn.Conv2d(6, 6, 3, padding="valid", bias=False)
        self.c5 = nn.Conv2d(6, 6, 3, stride=(2, 1), groups=6)

    def forward(self, x):
        x = F.elu(self.c1(x), alpha=0.5)
        x = F.gelu(self.c2(x))
        x = F.silu(self.c3(x))
        x = F.softplus(self.c4(x))
        x = torch.tanh(self.c5(x))
        return x.flatten(1)


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.mp = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.ap2 = nn.AvgPool2d(2, divisor_override=3)
        self.mp2 = nn.MaxPool2d(2, stride=1, dilation=2)
        self.gap = nn.AdaptiveAvgPool2d((2, 3))

    def forward(self, x):
        x = self.c(x)
        x = self.mp(x)
        a = self.ap(x)
        b = F.avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=True)
        c = F.max_pool2d(x, 3, 1, 1)
        h = torch.cat([self.ap2(b), F.adaptive_avg_pool2d(c, (3, 4)), self.mp2(F.adaptive_avg_pool2d(a, (5, 6)))], 1)
        return torch.cat([self.gap(h).flatten(1), h.mean((2, 3)), torch.mean(h, dim=(-1, -2), keepdim=True).flatten(1),
                          h.mean(3).flatten(1)], 1)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(6)
        self.mp = nn.MaxPool1d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
        self.c2 = nn.Conv1d(6, 8, 3, dilation=2, padding="same", groups=2)
        self.ap = nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        self.c3 = nn.Conv1d(8, 8, 3, stride=2)
        self.gap = nn.AdaptiveAvgPool1d(2)
        self.fc = nn.Linear(16 + 8, 4)

    def forward(self, x):
        x = self.mp(F.relu(self.bn1(self.c1(x))))
        x = self.ap(F.relu(self.c2(x)))
        x = F.max_pool1d(F.relu(self.c3(x)), 2, ceil_mode=True)
        x = torch.cat([self.gap(x).flatten(1), x.mean(-1)], 1)
        return self.fc(x)


class BNEverywhere(nn.Module):
    """BatchNorm after layers (folds), before a dense layer and an unpadded conv (folds into the input side),
    before a padded conv and after an add (cannot fold)."""

    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)          # before unpadded conv: folds into c1's input side
        self.c1 = nn.Conv2d(3, 6, 3, groups=3)
        self.bn1 = nn.BatchNorm2d(6)          # after c1: folds
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)          # after c2 (no bias): folds
        self.bn3 = nn.BatchNorm2d(6)          # after an add, before a padded conv: kept
        self.c3 = nn.Conv2d(6, 4, 3, padding=1)
        self.bn4 = nn.BatchNorm1d(4 * 6 * 6)  # after flatten, before dense: folds into fc1's input side
        self.fc1 = nn.Linear(4 * 6 * 6, 10)
        self.bn5 = nn.BatchNorm1d(10)         # after dense: folds
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = self.bn1(self.c1(self.bn0(x)))
        y = F.relu(self.bn2(self.c2(F.relu(x))))
        h = self.c3(self.bn3(x + y))
        h = self.bn4(h.flatten(1))
        return self.fc2(F.relu(self.bn5(self.fc1(h))))


class ActModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(7, 9), nn.LeakyReLU(0.05), nn.Linear(9, 9), nn.ELU(0.7), nn.Linear(9, 9), nn.GELU(),
            nn.Linear(9, 9), nn.SiLU(), nn.Linear(9, 9), nn.Softplus(), nn.Linear(9, 9), nn.Sigmoid(),
            nn.Linear(9, 9), nn.Tanh(), nn.Identity(), nn.Dropout(0.3), nn.Linear(9, 4),
        )

    def forward(self, x):
        x = self.seq(x)
        x = F.dropout(x, 0.5, training=self.training)
        return torch.sigmoid(F.elu(F.leaky_relu(x), 0.3)) + F.tanh(x)


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 8), nn.Tanh(),
                                  nn.Linear(8, 3)), (4, 10)),
    "residual": (Residual, (3, 3, 8, 8)),
    "branches": (Branches, (2, 3, 8, 8)),
    "conv_variants": (ConvVariants, (2, 4, 17, 19)),
    "pools": (Pools, (2, 2, 11, 13)),
    "conv1d": (Conv1dNet, (3, 3, 23)),
    "batchnorm": (BNEverywhere, (3, 3, 8, 8)),
    "activations": (ActModules, (5, 7)),
}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_forward_matches_torch(key):
    make, shape = MODELS[key]
    torch.manual_seed(1)
    check_forward(make(), torch.randn(*shape))


def test_residual_adds_are_add_nodes():
    g = check_forward(Residual(), torch.randn(2, 3, 8, 8))
    assert ops(g).count("add") == 3
    assert "conv1" in [n.name for n in g.nodes]
    assert g["conv1"].source.startswith("conv1")
    adds = [n for n in g.nodes if n.op == "add"]
    assert [n.name for n in adds] == ["add", "add_1", "add_2"] or all(n.name.startswith(("add", "iadd")) for n in adds)


def test_shared_module_gets_unique_names():
    g = check_forward(Branches(), torch.randn(2, 3, 8, 8))
    dense = [n.name for n in g.nodes if n.op == "dense"]
    assert len(dense) == len(set(dense))
    assert "fc1" in dense and "fc2" in dense
    assert "concat" in ops(g)


def test_batchnorm_folding():
    model = randomize(BNEverywhere())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="bn3"):
        g = from_torch(model, x)
    bns = [n for n in g.nodes if n.op == "batchnorm"]
    assert [n.name for n in bns] == ["bn3"], g
    np.testing.assert_allclose(graph_forward(g, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-10)
    # folded BatchNorms are not in the graph, and the folds are recorded in the sources
    names = [n.name for n in g.nodes]
    for k in ("bn0", "bn1", "bn2", "bn4", "bn5"):
        assert k not in names
    assert "bn1" in g["c1"].source and "bn0" in g["c1"].source
    assert "bn4" in g["fc1"].source and "bn5" in g["fc1"].source


def test_batchnorm_before_padded_conv_is_kept():
    model = randomize(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="BatchNorm '0'"):
        g = from_torch(model, x)
    assert ops(g) == ["input", "batchnorm", "conv", "activation"]
    np.testing.assert_allclose(graph_forward(g, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-10)


def test_batchnorm_with_two_consumers_is_not_folded_after():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            h = self.c(x)
            return (self.bn(h) + h).flatten(1)

    model = randomize(M())
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match="could not be folded"):
        g = from_torch(model, x)
    assert "batchnorm" in ops(g)
    np.testing.assert_allclose(graph_forward(g, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-10)


def test_no_warning_when_all_batchnorms_fold():
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 4 * 4, 3), nn.BatchNorm1d(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = from_torch(model, torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert "batchnorm" not in ops(g)


def test_mean_becomes_adaptive_avgpool():
    class M(nn.Module):
        def forward(self, x):
            return torch.cat([x.mean((2, 3)), x.mean(dim=[-1, -2], keepdim=True).flatten(1)], 1)

    g = check_forward(M(), torch.randn(2, 3, 4, 5))
    pools = [n for n in g.nodes if n.op == "adaptive_avgpool"]
    assert len(pools) == 2 and all(n.attrs["output_size"] == (1, 1) for n in pools)


def test_unbatched_example_input():
    torch.manual_seed(0)
    m = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)))
    g = from_torch(m, torch.randn(3, 6, 6, dtype=torch.float64))
    assert g.input_shape == (3, 6, 6)
    m2 = randomize(nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)))
    g2 = from_torch(m2, torch.randn(5, dtype=torch.float64))
    assert g2.input_shape == (5,) and g2.output_shape == (1,)
    g3 = from_torch(m2, torch.randn(7, 5, dtype=torch.float64))
    assert g3.input_shape == (5,)
    c1 = randomize(nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU()))
    assert from_torch(c1, torch.randn(2, 9, dtype=torch.float64)).input_shape == (2, 9)
    assert from_torch(c1, torch.randn(4, 2, 9, dtype=torch.float64)).input_shape == (2, 9)


def test_float32_model_and_numpy_input():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    g = from_torch(m, np.random.default_rng(0).standard_normal((2, 4)))
    assert g["0"].params["weight"].dtype == np.float64
    x = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(graph_forward(g, x), m.double()(torch.from_numpy(x)).detach().numpy(), rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# output activations


@pytest.mark.parametrize("last,kind", [(nn.Softmax(dim=1), "softmax"), (nn.LogSoftmax(dim=-1), "log_softmax"),
                                       (nn.Sigmoid(), "sigmoid")])
def test_output_activation_module_stripped(last, kind):
    model = randomize(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), last))
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match=f"output {kind}"):
        g = from_torch(model, x)
    assert g.output == "2"
    np.testing.assert_allclose(graph_forward(g, x.numpy()), model[:3](x).detach().numpy(), rtol=1e-9, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gk = from_torch(model, x, keep_output_activation=True)
    assert gk[gk.output].op == "activation" and gk[gk.output].attrs["kind"] == kind
    np.testing.assert_allclose(graph_forward(gk, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fn", [lambda h: F.softmax(h, dim=1), lambda h: h.softmax(-1), lambda h: torch.sigmoid(h),
                                lambda h: F.log_softmax(h, 1), lambda h: torch.softmax(h, 1)])
def test_output_activation_function_stripped(fn):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return fn(self.fc(x))

    model = randomize(M())
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="stripped"):
        g = from_torch(model, x)
    assert g.output == "fc"
    gk = from_torch(model, x, keep_output_activation=True)
    np.testing.assert_allclose(graph_forward(gk, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-12)


def test_softmax_inside_is_an_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match="softmax"):
        from_torch(model, torch.randn(2, 4))


# ------------------------------------------------------------------------------------------------
# errors


class _AddConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

        self.register_buffer("c", torch.ones(2, 3))  # a constant with a batch axis

    def forward(self, x):
        return self.fc(x) + self.c


class _Div(nn.Module):
    def forward(self, x):
        return x / (x + 1)


class _AddAlpha(nn.Module):
    def forward(self, x):
        return torch.add(x, x, alpha=2)


class _AddParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(2, 3))  # a batch axis

    def forward(self, x):
        return x + self.p


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class _Slice(nn.Module):
    def forward(self, x):
        return x[:, [0, 2]]  # advanced indexing (a list): not a slice


class _Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Identity(), nn.LSTM(3, 3))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize(
    "model,shape,pattern",
    [
        (_Lstm(), (2, 3), r"'features\.3' \(nn\.LSTM\)"),
        (nn.Sequential(nn.Conv3d(1, 1, 1)), (1, 1, 2, 2, 2), r"'0' \(nn\.Conv3d\)"),
        (_AddConst(), (2, 3), r"'add'.*constant"),
        (_Div(), (2, 3), r"truediv.*'truediv'.*division by a tensor"),
        (_AddAlpha(), (2, 3), r"'add'.*alpha=2"),
        (_AddParam(), (2, 3), r"'add'.*(constant|parameter)"),
        (_Slice(), (2, 3), r"getitem.*index \[0, 2\]"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), (1, 1, 4, 4), r"'0'.*padding_mode"),
        (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (1, 1, 4, 4), r"'0'.*return_indices"),
        (nn.Sequential(nn.Softmax(dim=0)), (2, 3, 4), r"'0'.*softmax over the batch axis"),
        (nn.Sequential(nn.Flatten(0)), (2, 3), r"'0'.*batch"),
        (_Branchy(), (2, 3), r"torch\.fx could not trace _Branchy"),
    ],
)
def test_unsupported_raise_named_errors(model, shape, pattern):
    with pytest.raises(UnsupportedLayerError, match=pattern):
        from_torch(model, torch.randn(*shape))


def test_error_is_graph_error():
    assert issubclass(UnsupportedLayerError, GraphError)


def test_batch_axis_changing_view_is_an_error():
    class M(nn.Module):
        def forward(self, x):
            return x.view(-1)

    with pytest.raises(UnsupportedLayerError, match="batch axis"):
        from_torch(M(), torch.randn(2, 3))


# ------------------------------------------------------------------------------------------------
# the user's model is not modified


def test_model_unchanged_after_import():
    model = randomize(BNEverywhere())
    model.train()
    model.c2.eval()  # a mixed train/eval state must come back exactly
    modes = {k: m.training for k, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = from_torch(model, x)
    assert {k: m.training for k, m in model.named_modules()} == modes
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(after[k], state[k]), k
        assert after[k].data_ptr() == ptrs[k], k
    # the graph's parameters are copies: changing them does not touch the model
    g["c1"].params["weight"][...] = 0
    assert torch.equal(model.c1.weight, state["c1.weight"])
    assert model.c1.weight.dtype == torch.float64


def test_graph_meta_and_roundtrip(tmp_path):
    model = randomize(Residual())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    g = from_torch(model, x, name="res")
    assert g.meta["name"] == "res" and g.meta["framework"].startswith("torch")
    p = tmp_path / "g.npz"
    g.save(p)
    g2 = type(g).load(p)
    np.testing.assert_allclose(graph_forward(g2, x.numpy()), model(x).detach().numpy(), rtol=1e-9, atol=1e-10)


def test_linear_on_tokens_acts_on_the_last_axis():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 5)
            self.w = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return torch.nn.functional.linear(torch.relu(self.proj(x)), self.w).flatten(1)

    m = randomize(Tokens().eval(), 4)  # float64
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    for g in (from_torch(m, x), from_torch(torch.export.export(m, (x,)))):
        assert [n.shape for n in g if n.op == "dense"] == [(4, 5), (4, 3)]
        np.testing.assert_allclose(graph_forward(g, x.numpy()), m(x).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_functional_conv_and_batch_norm_with_module_parameters():
    """timm's BatchNormAct2d calls F.batch_norm with its own buffers; weight-standardised
    convs call F.conv2d: both read module parameters through get_attr."""
    F = torch.nn.functional

    class BNAct(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                           0.1, self.eps))

    class FConv(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    m = randomize(nn.Sequential(FConv(3, 8, 3, padding=1, stride=2), BNAct(8), nn.Flatten(), nn.Linear(72, 2)), 5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    g = from_torch(m, x)
    assert [n.op for n in g] == ["input", "conv", "activation", "reshape", "dense"]  # the BatchNorm folded
    np.testing.assert_allclose(graph_forward(g, x.numpy()), m(x).detach().numpy(), rtol=1e-10, atol=1e-12)


class _TokenMean(torch.nn.Module):
    """Token features (N, T, E) averaged over the tokens (timm's global_pool="avg"), in one of
    two spellings: x.mean(1), or the (N, C, L) form the importer always took."""

    def __init__(self, spelled_as_pool: bool):
        super().__init__()
        self.fc0, self.fc = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
        self.pool = spelled_as_pool

    def forward(self, x):
        h = torch.relu(self.fc0(x))
        a = F.adaptive_avg_pool1d(h.transpose(1, 2), 1).flatten(1) if self.pool else h.mean(1)
        b = h.mean(dim=(1, 2), keepdim=True)[:, 0]  # every per-sample axis, keepdim
        return self.fc(a) + b


def test_mean_over_token_and_mixed_axes():
    torch.manual_seed(0)
    m, ref = _TokenMean(False).eval(), _TokenMean(True).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 5, 6)
    g, gr = from_torch(m, x[:1]), from_torch(ref, x[:1])
    xn = x.double().numpy()
    for comp in ("epsilon_plus", "epsilon_alpha2_beta1"):
        ex, er = fastlrp.Explainer(g, comp, backend="reference"), fastlrp.Explainer(gr, comp, backend="reference")
        np.testing.assert_allclose(ex.forward(xn), m(x).detach().double().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ex.explain(xn), er.explain(xn), rtol=1e-10, atol=1e-12)
    with pytest.raises(UnsupportedLayerError, match="batch axis"):
        from_torch(type("M", (torch.nn.Module,), {"forward": lambda self, x: x.mean(0)})(), x[:1])
