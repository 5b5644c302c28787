"""The ``slice`` op (x[:, a:b], chunk, split, unbind, narrow, select): the float64
reference, its checks, and the torch.fx / torch.export entries, with a ShuffleNet
unit (chunk, channel shuffle). Backends against the reference: test_backend_matrix.py."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp.graph import GraphBuilder, GraphError


def test_reference_routes_relevance_to_the_sliced_positions():
    gb = GraphBuilder((6, 4))
    a = gb.add_node("slice", gb.input, {"axis": 0, "start": 1, "stop": 5, "step": 2}, name="rows")
    b = gb.add_node("slice", gb.input, {"axis": -1, "start": -2, "stop": None}, name="cols")
    g = gb.build(output=gb.concat([gb.flatten(a), gb.flatten(b)]))
    assert g["rows"].shape == (2, 4) and g["cols"].shape == (6, 2) and g["cols"].attrs["axis"] == 1
    x = np.random.default_rng(0).standard_normal((2, 6, 4))
    ex = fastlrp.Explainer(g, fastlrp.Composite({}), backend="reference")
    np.testing.assert_array_equal(ex.forward(x), np.concatenate([x[:, 1:5:2].reshape(2, -1),
                                                                 x[:, :, -2:].reshape(2, -1)], 1))
    R = ex.explain(x, target=np.ones((2, 20)))
    want = np.zeros_like(x)
    want[:, 1:5:2] += 1
    want[:, :, -2:] += 1
    np.testing.assert_array_equal(R, want)


@pytest.mark.parametrize("attrs,match", [
    ({"axis": 2, "start": 0, "stop": 1}, "do not fit"),
    ({"axis": 0, "start": 3, "stop": 3}, "is empty"),
    ({"axis": 0, "start": 0, "stop": 2, "step": 0}, "step >= 1"),
])
def test_bad_slices_name_the_node(attrs, match):
    gb = GraphBuilder((4, 3))
    gb.add_node("slice", gb.input, attrs, name="cut")
    with pytest.raises(GraphError, match=f"'cut'.*{match}"):
        gb.build()


def _shuffle_unit():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class ShuffleUnit(nn.Module):
        """ShuffleNet v2's stride-1 unit: split the channels, transform one half, shuffle."""

        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                        nn.Conv2d(4, 4, 1), nn.ReLU())
            self.fc = nn.Linear(64 + 32 + 32 + 8 + 8, 3)

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            h = torch.cat([a, self.branch(b)], 1)
            B, C, H, W = h.shape
            h = h.view(B, 2, C // 2, H, W).transpose(1, 2).reshape(B, C, H, W)  # channel shuffle
            p, q, r = torch.split(h, [4, 2, 2], dim=1)
            u = torch.unbind(r, dim=2)[0]
            v = h[:, :, 1:3, ::2]
            w = h.narrow(1, 2, 2).select(2, -1)
            return self.fc(torch.cat([p.flatten(1), q.flatten(1), v.flatten(1), u.flatten(1), w.flatten(1)], 1))

    torch.manual_seed(1)
    return torch, ShuffleUnit().eval()


def test_torch_shufflenet_unit_imports_through_fx_and_export():
    torch, m = _shuffle_unit()
    x = torch.randn(2, 8, 4, 4)
    want = m(x).detach().numpy()
    for g in (fastlrp.from_torch(m, x), fastlrp.from_torch(torch.export.export(m, (x,)))):
        assert "slice" in {n.op for n in g}
        ref = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
        np.testing.assert_allclose(ref.forward(x.numpy().astype(np.float64)), want, rtol=1e-5, atol=1e-6)
        R = ref.explain(x.numpy().astype(np.float64))
        assert R.shape == tuple(x.shape) and np.abs(R).sum() > 0


def test_slicing_the_batch_axis_is_refused():
    torch = pytest.importorskip("torch")

    class Batch(torch.nn.Module):
        def forward(self, x):
            return x[1:]

    with pytest.raises(fastlrp.UnsupportedLayerError, match="per-sample axes"):
        fastlrp.from_torch(Batch(), torch.randn(3, 4))
