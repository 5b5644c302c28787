"""Scaling out with dask.distributed: a LocalCluster with two workers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import fastlrp  # noqa: E402
import fastlrp.dask as fdask  # noqa: E402
from fastlrp.dataset import InputError, StoreMismatchError, explain_dataset, load_store  # noqa: E402

ARRAYS = ("relevance", "output", "target", "valid", "done")


from _graphs import small_graph  # noqa: E402


def same_store(a, b):
    A, B = load_store(a), load_store(b)
    for k in ARRAYS:
        assert np.array_equal(np.asarray(A[k][:]), np.asarray(B[k][:]), equal_nan=True), k


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def test_dask_equals_single_process(tmp_path, client):
    da = pytest.importorskip("dask.array")
    g = small_graph()
    g.save(tmp_path / "g.npz")
    x = np.random.default_rng(0).normal(size=(70, 1, 6, 6)).astype(np.float32)
    x[9, 0, 0, 0] = np.nan
    t = np.random.default_rng(1).integers(0, 5, size=(70, 2))
    ex = fastlrp.Explainer(g, "epsilon_plus_flat", backend="reference")
    with pytest.warns(Warning, match=r"\[9\]"):
        explain_dataset(ex, x, tmp_path / "single.zarr", target=t, batch_size=8, quiet=True)
    builds = fdask.BUILDS["count"]
    with pytest.warns(Warning, match=r"\[9\]"):
        res = fdask.explain_dask(str(tmp_path / "g.npz"), da.from_array(x, chunks=(25, 1, 6, 6)),
                                 tmp_path / "dask.zarr", "epsilon_plus_flat", target=t, backend="reference",
                                 chunk_size=8, client=client, quiet=True)
    assert res.computed == 70 and res.computed_chunks == 9 and list(res.nonfinite) == [9]
    assert 1 <= fdask.BUILDS["count"] - builds <= 2  # each worker built its Explainer once for 9 chunks
    same_store(tmp_path / "single.zarr", tmp_path / "dask.zarr")
    # a Graph object is broadcast to the workers; zarr input; argmax targets
    x[9, 0, 0, 0] = 0.0
    import zarr

    zarr.save_array(str(tmp_path / "x.zarr"), x)
    explain_dataset(ex, x, tmp_path / "single2.zarr", batch_size=8, quiet=True)
    fdask.explain_dask(g, str(tmp_path / "x.zarr"), tmp_path / "dask2.zarr", "epsilon_plus_flat",
                       backend="reference", chunk_size=8, quiet=True)  # the current client is found
    same_store(tmp_path / "single2.zarr", tmp_path / "dask2.zarr")


class Stop(RuntimeError):
    pass


def test_dask_resumes(tmp_path, client):
    g = small_graph()
    x = np.random.default_rng(2).normal(size=(50, 1, 6, 6)).astype(np.float32)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    explain_dataset(ex, x, tmp_path / "ref.zarr", batch_size=8, quiet=True)

    def batches():  # an interrupted single-process run leaves 3 chunks done
        for a in range(0, 50, 8):
            if a == 24:
                raise Stop
            yield x[a:a + 8]

    with pytest.raises(Stop):
        explain_dataset(ex, batches(), tmp_path / "s.zarr", batch_size=8, n_samples=50, quiet=True)
    res = fdask.explain_dask(g, x, tmp_path / "s.zarr", "epsilon_plus", backend="reference", client=client,
                             quiet=True)
    assert res.reused_chunks == 3 and res.computed_chunks == 4 and res.computed == 26
    same_store(tmp_path / "ref.zarr", tmp_path / "s.zarr")
    again = fdask.explain_dask(g, x, tmp_path / "s.zarr", "epsilon_plus", backend="reference", client=client,
                               quiet=True)
    assert again.computed == 0
    with pytest.raises(StoreMismatchError, match="composite"):
        fdask.explain_dask(g, x, tmp_path / "s.zarr", "epsilon_plus_flat", backend="reference", client=client,
                           quiet=True)
    with pytest.raises(InputError, match="expects"):
        fdask.explain_dask(g, x[:, :, :5], tmp_path / "t.zarr", backend="reference", client=client, quiet=True)
