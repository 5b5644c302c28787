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

ARRAYS = ("relevance", "output", "target", "valid", "done", "checksum")


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


# ------------------------------------------------------------------------------------------
# worker processes, and a worker killed mid-run


def kill_worker_at(block, marker, at, always, block_id=None):
    """The identity on source blocks, but the worker computing block ``at`` kills its
    own process (SIGKILL: no cleanup) the first time (every time when ``always``)."""
    import os
    import signal

    if block_id[0] == at and (always or not os.path.exists(marker)):
        open(marker, "a").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return block


@pytest.fixture(scope="module")
def process_client():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):  # a task may lose one worker
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=50) as cluster, distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def proc_case(tmp_path_factory):
    """A graph file, 60 samples and the single-process store of them."""
    tmp = tmp_path_factory.mktemp("proc")
    g = small_graph()
    g.save(tmp / "g.npz")
    x = np.random.default_rng(4).normal(size=(60, 1, 6, 6)).astype(np.float32)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    explain_dataset(ex, x, tmp / "single.zarr", batch_size=8, quiet=True)
    return tmp, x


def test_worker_processes_and_a_killed_worker(tmp_path, process_client, proc_case):
    """Two worker processes write one store; the worker explaining chunk 3 is killed
    (SIGKILL) once: dask retries the task on a fresh worker, the store equals the
    single-process one bitwise."""
    da = pytest.importorskip("dask.array")
    tmp, x = proc_case
    res = fdask.explain_dask(str(tmp / "g.npz"), da.from_array(x, chunks=(8, 1, 6, 6)), tmp_path / "plain.zarr",
                             "epsilon_plus", backend="reference", chunk_size=8, client=process_client, quiet=True)
    assert res.computed == 60 and res.computed_chunks == 8
    same_store(tmp / "single.zarr", tmp_path / "plain.zarr")
    src = da.from_array(x, chunks=(8, 1, 6, 6)).map_blocks(kill_worker_at, str(tmp_path / "killed"), 3, False,
                                                            dtype=x.dtype)
    res = fdask.explain_dask(str(tmp / "g.npz"), src, tmp_path / "k.zarr", "epsilon_plus", backend="reference",
                             chunk_size=8, client=process_client, quiet=True)
    assert (tmp_path / "killed").exists() and res.computed == 60
    same_store(tmp / "single.zarr", tmp_path / "k.zarr")
    assert fastlrp.verify_store(tmp_path / "k.zarr", source=x).ok


def test_run_that_loses_its_workers_is_resumed(tmp_path, process_client, proc_case):
    """The worker explaining chunk 5 is killed on every try: the run fails
    (KilledWorker), the chunks written are kept, a resume completes the store
    bitwise as a single-process run."""
    da = pytest.importorskip("dask.array")
    tmp, x = proc_case
    src = da.from_array(x, chunks=(8, 1, 6, 6)).map_blocks(kill_worker_at, str(tmp_path / "killed"), 5, True,
                                                            dtype=x.dtype)
    with pytest.raises(distributed.KilledWorker):
        fdask.explain_dask(str(tmp / "g.npz"), src, tmp_path / "k.zarr", "epsilon_plus", backend="reference",
                           chunk_size=8, client=process_client, quiet=True)
    report = fastlrp.verify_store(tmp_path / "k.zarr", source=x)
    assert 5 in report.missing_chunks and not report.damaged_chunks and not report.changed_chunks
    res = fdask.explain_dask(str(tmp / "g.npz"), x, tmp_path / "k.zarr", "epsilon_plus", backend="reference",
                             client=process_client, quiet=True)
    # which chunks the killed run finished depends on the scheduler, and tasks still running when
    # KilledWorker was raised may finish after the report: the resume reuses at least the chunks
    # done then and computes the rest (chunk 7 holds 4 samples, the others 8)
    assert res.reused_chunks >= 8 - len(report.missing_chunks)
    assert res.computed in (60 - 8 * res.reused_chunks, 60 - 8 * (res.reused_chunks - 1) - 4)
    same_store(tmp / "single.zarr", tmp_path / "k.zarr")
