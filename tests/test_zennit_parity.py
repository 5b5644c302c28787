"""Parity with zennit 1.0.0: fastlrp (from_torch + reference backend) against zennit's composites, float64.

zennit side: the composite registered on the torch model (BatchNorm merged by
``SequentialMergeBatchNorm`` where the net has BatchNorm), relevance = the
input gradient with the output gradient seeded by ``one_hot(argmax) * output``.
Residual nets are built twice with the same weights: the fastlrp side uses a
plain ``out + identity`` (seen by torch.fx), the zennit side zennit's
``Sum`` module over ``torch.stack([...], dim=-1)`` (zennit only assigns rules
to modules; a bare ``+`` would get the plain gradient).

See docs/zennit_semantics.md for what zennit does and why these must agree.
"""

import numpy as np
import pytest

from conftest import import_zennit

torch = pytest.importorskip("torch")
zennit = import_zennit()

import zennit.canonizers as zcanon  # noqa: E402
import zennit.composites as zcomp  # noqa: E402
from zennit.layer import Sum  # noqa: E402

import fastlrp  # noqa: E402
from fastlrp.composites import EpsilonGammaBox  # noqa: E402
from fastlrp.importers.torch import from_torch  # noqa: E402
from _torch_helpers import randomize as _randomize  # noqa: E402

nn = torch.nn
F = torch.nn.functional

RTOL = 1e-5

COMPOSITES = {
    "epsilon_plus": (lambda c: zcomp.EpsilonPlus(canonizers=c), lambda: "epsilon_plus"),
    "epsilon_plus_flat": (lambda c: zcomp.EpsilonPlusFlat(canonizers=c), lambda: "epsilon_plus_flat"),
    "epsilon_alpha2_beta1": (lambda c: zcomp.EpsilonAlpha2Beta1(canonizers=c), lambda: "epsilon_alpha2_beta1"),
    "epsilon_alpha2_beta1_flat": (lambda c: zcomp.EpsilonAlpha2Beta1Flat(canonizers=c),
                                  lambda: "epsilon_alpha2_beta1_flat"),
    "epsilon_gamma_box": (lambda c: zcomp.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=c),
                          lambda: EpsilonGammaBox(low=-3, high=3)),
}


def randomize(model, seed):
    return _randomize(model, seed, gain=2.0)


# ------------------------------------------------------------------------------------------------
# models


def mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(12 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 6),
    )


def vgg_bn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
        nn.Linear(16 * 2 * 2, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 7),
    )


class Block(nn.Module):
    """A ResNet basic block; ``zennit_sum`` selects zennit's Sum module instead of a plain ``+``."""

    def __init__(self, cin, cout, stride, zennit_sum):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.zennit_sum = zennit_sum
        if zennit_sum:
            self.sum = Sum()
        self.relu = nn.ReLU()  # registered last, so SequentialMergeBatchNorm sees conv -> bn pairs

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.zennit_sum:
            out = self.sum(torch.stack([out, identity], dim=-1))
        else:
            out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, zennit_sum=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1, zennit_sum)
        self.layer2 = Block(8, 12, 2, zennit_sum)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.pool(x)))


def conv1d():
    return nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(6, 8, 3), nn.ReLU(), nn.AvgPool1d(2),
        nn.Flatten(), nn.Linear(8 * 6, 12), nn.ReLU(), nn.Linear(12, 4),
    )


def padded_cnn():
    """Explicit padding and cropping modules: routing only, relevance at padded positions is absorbed."""
    return nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(3, 6, 3), nn.ReLU(),
        nn.ConstantPad2d((-1, 1, 1, -1), 0.25), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )


def tanh_regression():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))


# name -> (fastlrp-side factory, zennit-side factory, input shape, has BatchNorm)
MODELS = {
    "mlp": (mlp, mlp, (4, 20), False),
    "cnn": (cnn, cnn, (3, 3, 16, 16), False),
    "vgg_bn": (vgg_bn, vgg_bn, (3, 3, 16, 16), True),
    "resnet": (lambda: ResNet(False), lambda: ResNet(True), (3, 3, 12, 12), True),
    "conv1d": (conv1d, conv1d, (3, 2, 30), False),
    "padded_cnn": (padded_cnn, padded_cnn, (3, 3, 12, 12), False),
    "tanh_regression": (tanh_regression, tanh_regression, (8,), False),  # one sample, no batch axis
}


def zennit_relevance(model, composite, x):
    xb = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xb)
        rows = torch.arange(out.shape[0])
        idx = out.argmax(dim=1)
        seed = torch.zeros_like(out)
        seed[rows, idx] = out[rows, idx].detach()
        (R,) = torch.autograd.grad(out, xb, grad_outputs=seed)
    return R.detach().numpy()


@pytest.mark.parametrize("comp", sorted(COMPOSITES))
@pytest.mark.parametrize("key", sorted(MODELS))
def test_parity_with_zennit(key, comp):
    make_ours, make_zennit, shape, has_bn = MODELS[key]
    seed = sorted(MODELS).index(key) * 10 + sorted(COMPOSITES).index(comp)
    ours_model = randomize(make_ours(), seed)
    z_model = make_zennit().double().eval()
    z_model.load_state_dict(ours_model.state_dict())

    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).clamp(-3, 3)

    graph = from_torch(ours_model, x)
    if has_bn:
        assert "batchnorm" not in [n.op for n in graph.nodes]
    make_z, make_f = COMPOSITES[comp]
    explainer = fastlrp.Explainer(graph, make_f(), backend="reference")

    np.testing.assert_allclose(explainer.forward(x.numpy()), ours_model(x).detach().numpy(), rtol=1e-10, atol=1e-12)
    R_ours = np.asarray(explainer.explain(x.numpy()))

    canonizers = [zcanon.SequentialMergeBatchNorm()] if has_bn else None
    if key == "tanh_regression":
        R_z = zennit_relevance_unbatched(z_model, make_z(canonizers), x)
    else:
        R_z = zennit_relevance(z_model, make_z(canonizers), x)

    assert R_ours.shape == R_z.shape == tuple(x.shape)
    scale = np.abs(R_z).max()
    assert scale > 0
    err = np.abs(R_ours - R_z).max() / scale
    assert err <= RTOL, f"{key}/{comp}: max relative error {err:.3g}"


def zennit_relevance_unbatched(model, composite, x):
    """One sample without a batch axis: zennit gets it with a batch axis of 1."""
    xb = x[None].clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xb)
        idx = int(out[0].argmax())
        seed = torch.zeros_like(out)
        seed[0, idx] = out[0, idx].detach()
        (R,) = torch.autograd.grad(out, xb, grad_outputs=seed)
    return R[0].detach().numpy()
