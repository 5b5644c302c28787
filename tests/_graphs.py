"""Small graphs shared by the dataset, CLI and Dask tests."""

from __future__ import annotations

import numpy as np

import fastlrp


def small_graph(seed=0):
    rng = np.random.default_rng(seed)
    b = fastlrp.GraphBuilder((1, 6, 6))
    h = b.conv(b.input, rng.normal(size=(4, 1, 3, 3)), rng.normal(size=4) * 0.1, padding=1)
    h = b.activation(h, "relu")
    h = b.flatten(h)
    h = b.dense(h, rng.normal(size=(5, 144)) * 0.2, rng.normal(size=5) * 0.1)
    return b.build(meta={"name": "small"})
