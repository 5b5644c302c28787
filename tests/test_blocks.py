"""The building blocks of the zoo models, as structural replicas in plain torch,
imported through torch.fx and explained on every backend against the float64
reference: a squeeze-excitation block with constants and layer scale, a block of
hard activations, LayerNorm2d / LayerNorm / RMSNorm with F.linear, a ShuffleNet
unit (chunk, channel shuffle, split, slicing), a U-Net up block (transposed conv,
bilinear upsampling, concat with the skip). The models are the ones the op tests
check against torch's own outputs (test_merge, test_activations, test_norm,
test_slice, test_conv_transpose)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlrp  # noqa: E402
from _nets import BACKENDS, RTOL_NET, explain_vs_reference, rel_err  # noqa: E402
from test_activations import _torch_hard_model  # noqa: E402
from test_conv_transpose import _UNetUp  # noqa: E402
from test_merge import _torch_se  # noqa: E402
from test_norm import _torch_model as _torch_norms  # noqa: E402
from test_slice import _shuffle_unit  # noqa: E402

# the GPU backends run ops without a device kernel on the host, with a one-time warning
pytestmark = pytest.mark.filterwarnings("ignore:fastlrp cuda.*runs on the host:RuntimeWarning")


def _unet():
    torch.manual_seed(2)
    return torch, _UNetUp().eval()


BLOCKS = {
    "squeeze_excitation": (_torch_se, (2, 3, 6, 6)),
    "hard_activations": (_torch_hard_model, (2, 3, 8, 8)),
    "layer_norms": (_torch_norms, (2, 3, 6, 6)),
    "shufflenet_unit": (_shuffle_unit, (2, 8, 4, 4)),
    "unet_up": (_unet, (2, 3, 8, 8)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box(low=-3, high=3)"])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_block_on_every_backend(block, composite, backend):
    make, shape = BLOCKS[block]
    _, m = make()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(block)))
    graph = fastlrp.from_torch(m, x)
    got, want = explain_vs_reference(backend, graph, composite, x.numpy(), target=0)
    assert np.abs(want).max() > 0
    assert rel_err(got, want) < RTOL_NET, f"{block} on {backend}: {rel_err(got, want):.3g}"
