"""The CPU bench's Captum peer (bench/captum_peer.py): its rule mapping makes Captum's
LRP compute what fastlrp's reference computes with the same rules.

On a tiny float64 net with every layer type the mapping handles (convs with biases,
BatchNorm to fold, max pooling, a residual add through Captum's Addition_Module,
Flatten, dense layers), for the composites whose Captum rules fastlrp can express.
Skipped without captum (not a test dependency).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("captum.attr", reason="captum is not installed (the bench's optional peer)")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from captum.attr._utils.custom_modules import Addition_Module  # noqa: E402
from captum_peer import CaptumRunner, matched_composite  # noqa: E402
from torch import nn  # noqa: E402

import fastlrp  # noqa: E402


class TinyResidualNet(nn.Module):
    def __init__(self, captum_add: bool):
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.add = Addition_Module() if captum_add else None
        self.relu3, self.flat = nn.ReLU(), nn.Flatten()
        self.fc1, self.relu4, self.fc2 = nn.Linear(4 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5)

    def forward(self, x):
        h = self.pool(self.relu1(self.conv1(x)))
        y = self.bn2(self.conv2(h))
        h = self.relu3(self.add(y, h) if self.add is not None else y + h)
        return self.fc2(self.relu4(self.fc1(self.flat(h))))


def _net(captum_add):
    torch.manual_seed(0)
    net = TinyResidualNet(captum_add).double().eval()
    with torch.no_grad():
        net.bn2.running_mean.uniform_(-0.2, 0.2)
        net.bn2.running_var.uniform_(0.5, 1.5)
        net.bn2.weight.uniform_(0.5, 1.5)
        net.bn2.bias.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("comp", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat"])
def test_captum_mapping_matches_fastlrp(comp):
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fastlrp.from_torch(_net(False), torch.zeros((1, 2, 8, 8), dtype=torch.float64))
    ref = fastlrp.Explainer(graph, matched_composite(comp), backend="reference")
    target = ref.forward(x).argmax(axis=1)
    want = ref.explain(x, target=target)
    runner = CaptumRunner(_net(True), comp, x)
    got = runner(x, [target])
    again = runner(x, [target])  # Captum drops the rules after each call: the runner sets them again
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    np.testing.assert_array_equal(again, got)


def test_gamma_has_no_fastlrp_equivalent():
    assert matched_composite("epsilon_gamma_box") is None
