"""Dataset-scale attribution: stores, sources, resuming, NaN handling, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlrp
from fastlrp.dataset import (
    InputError,
    NonFiniteSamplesWarning,
    StoreMismatchError,
    auto_batch_size,
    explain_dataset,
    load_store,
    parse_bytes,
)

zarr = pytest.importorskip("zarr")

ARRAYS = ("relevance", "output", "target", "valid", "done")


def small_graph(seed=0, classes=5):
    rng = np.random.default_rng(seed)
    b = fastlrp.GraphBuilder((1, 6, 6))
    h = b.conv(b.input, rng.normal(size=(4, 1, 3, 3)), rng.normal(size=4) * 0.1, padding=1)
    h = b.activation(h, "relu")
    h = b.maxpool(h, 2)
    h = b.flatten(h)
    h = b.dense(h, rng.normal(size=(classes, 36)) * 0.3, rng.normal(size=classes) * 0.1)
    return b.build(meta={"name": f"small{seed}"})


class CountingExplainer(fastlrp.Explainer):
    """Counts the samples given to the engine to explain."""

    rows = 0

    def explain_batch(self, x, *args, **kwargs):
        self.rows += x.shape[0]
        return super().explain_batch(x, *args, **kwargs)


def make(composite="epsilon_plus_flat", seed=0):
    return CountingExplainer(small_graph(seed), composite, backend="reference")


def data(n=50, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 1, 6, 6)).astype(np.float32)


def same_store(a, b):
    A, B = load_store(a), load_store(b)
    for k in ARRAYS:
        x, y = np.asarray(A[k][:]), np.asarray(B[k][:])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        assert np.array_equal(x, y, equal_nan=True), k
    return A, B


def test_store_equals_explain(tmp_path):
    ex, x = make(), data()
    res = ex.explain_dataset(x, tmp_path / "s.zarr", batch_size=8, quiet=True)
    assert (res.n_samples, res.computed, res.reused_chunks, res.chunk_size) == (50, 50, 0, 8)
    st = load_store(tmp_path / "s.zarr")
    np.testing.assert_allclose(st["relevance"][:], ex.explain(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st["output"][:], ex.forward(x), rtol=1e-12)
    np.testing.assert_array_equal(st["target"][:], ex.forward(x).argmax(1))
    assert st["valid"][:].all() and st["done"][:].all()
    meta = st["meta"]
    assert meta["graph_fingerprint"] == ex.graph.fingerprint() and meta["composite"] == "epsilon_plus_flat"
    assert meta["complete"] and meta["n_samples"] == 50
    # the same call again finds everything done and computes nothing
    rows = ex.rows
    res2 = ex.explain_dataset(x, tmp_path / "s.zarr", batch_size=8, quiet=True)
    assert res2.computed == 0 and res2.reused_chunks == 7 and ex.rows == rows


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_several_targets(tmp_path, fmt):
    ex, x = make(), data(30)
    out = tmp_path / ("s.zarr" if fmt == "zarr" else "s.npy")
    explain_dataset(ex, x, out, target="all", batch_size=7, quiet=True)
    st = load_store(out)
    assert st["relevance"].shape == (30, 5, 1, 6, 6)
    np.testing.assert_allclose(st["relevance"][:], ex.explain(x, target="all"), atol=1e-12)
    np.testing.assert_array_equal(st["target"][:], np.tile(np.arange(5), (30, 1)))
    t = np.random.default_rng(0).integers(0, 5, size=(30, 2))
    out2 = tmp_path / ("t.zarr" if fmt == "zarr" else "t.npy")
    explain_dataset(ex, x, out2, target=t, batch_size=16, quiet=True)
    np.testing.assert_allclose(load_store(out2)["relevance"][:], ex.explain(x, target=t), atol=1e-12)
    seed = np.random.default_rng(1).normal(size=(30, 5))
    out3 = tmp_path / ("u.zarr" if fmt == "zarr" else "u.npy")
    explain_dataset(ex, x, out3, target=seed, batch_size=16, quiet=True)
    np.testing.assert_allclose(load_store(out3)["relevance"][:], ex.explain(x, target=seed), atol=1e-12)


def test_sources(tmp_path):
    h5py = pytest.importorskip("h5py")
    ex, x = make(), data(40)
    ref = ex.explain(x)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", pixels=x, labels=np.zeros(40))
    zarr.save_array(str(tmp_path / "x.zarr"), x)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["inputs"] = x
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    sources = [(mm, {}), (str(tmp_path / "x.npy"), {}), (str(tmp_path / "x.npz"), {"key": "pixels"}),
               (str(tmp_path / "x.zarr"), {}), (zarr.open_array(str(tmp_path / "x.zarr"), mode="r"), {}),
               (str(tmp_path / "x.h5"), {})]
    for i, (src, kw) in enumerate(sources):
        explain_dataset(ex, src, tmp_path / f"o{i}.zarr", batch_size=16, quiet=True, **kw)
        np.testing.assert_allclose(load_store(tmp_path / f"o{i}.zarr")["relevance"][:], ref, atol=1e-12, err_msg=str(i))
    with pytest.raises(InputError, match="several arrays"):
        explain_dataset(ex, str(tmp_path / "x.npz"), tmp_path / "bad.zarr", quiet=True)

    # an iterable of x batches of uneven size, length unknown: the zarr store grows
    def gen():
        for a in (0, 3, 20, 21, 33):
            yield x[a:{0: 3, 3: 20, 20: 21, 21: 33, 33: 40}[a]]

    res = explain_dataset(ex, gen(), tmp_path / "g.zarr", chunk_size=8, batch_size=8, quiet=True)
    assert res.n_samples == 40
    np.testing.assert_allclose(load_store(tmp_path / "g.zarr")["relevance"][:], ref, atol=1e-12)
    assert load_store(tmp_path / "g.zarr")["meta"]["n_samples"] == 40


def test_torch_dataloader_labels(tmp_path):
    torch = pytest.importorskip("torch")
    ex, x = make(), data(37)
    y = np.random.default_rng(3).integers(0, 5, size=37)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=10, shuffle=False)
    res = explain_dataset(ex, loader, tmp_path / "d.zarr", target="label", chunk_size=8, quiet=True)
    assert res.n_samples == 37 and res.meta["n_samples"] == 37
    st = load_store(tmp_path / "d.zarr")
    np.testing.assert_array_equal(st["target"][:], y)
    np.testing.assert_allclose(st["relevance"][:], ex.explain(x, target=y), atol=1e-12)


class Boom(RuntimeError):
    pass


def test_resume_after_exception_iterable(tmp_path):
    x = data(50)
    ref_ex = make()
    explain_dataset(ref_ex, x, tmp_path / "ref.zarr", batch_size=8, quiet=True)

    def batches(fail_after=None):
        for i, a in enumerate(range(0, 50, 6)):
            if fail_after is not None and i == fail_after:
                raise Boom("source failed")
            yield x[a:a + 6], np.zeros(len(x[a:a + 6]))

    ex = make()
    with pytest.raises(Boom):
        explain_dataset(ex, batches(fail_after=5), tmp_path / "s.zarr", batch_size=8, quiet=True)
    first = ex.rows
    assert first == 24  # 5 batches of 6 = 30 samples: 3 whole chunks of 8 done, 6 samples never explained
    st = load_store(tmp_path / "s.zarr")
    assert np.count_nonzero(st["done"][:]) == 3 and not st["meta"]["complete"]
    ex.rows = 0
    res = explain_dataset(ex, batches(), tmp_path / "s.zarr", batch_size=8, quiet=True)
    assert ex.rows == 50 - 24 and res.computed == 26 and res.reused_chunks == 3
    same_store(tmp_path / "ref.zarr", tmp_path / "s.zarr")
    # a resumed iterable giving other data (e.g. shuffled) is refused
    with pytest.raises(StoreMismatchError, match="different data"):
        load = lambda: ((x[::-1][a:a + 8],) for a in range(0, 50, 8))  # noqa: E731
        st_meta = load_store(tmp_path / "s.zarr")["meta"]
        assert st_meta["complete"]
        # force re-reading: remove the last chunk's marker so the run iterates
        g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
        g["done"][6] = 0
        explain_dataset(ex, load(), tmp_path / "s.zarr", batch_size=8, quiet=True)


class FailingArray:
    """An array source that raises on the k-th read."""

    def __init__(self, x, fail_at):
        self.x, self.fail_at, self.reads = x, fail_at, 0
        self.shape, self.dtype = x.shape, x.dtype

    def __len__(self):
        return len(self.x)

    def __getitem__(self, s):
        self.reads += 1
        if self.reads == self.fail_at:
            raise KeyboardInterrupt  # what a Ctrl-C does
        return self.x[s]


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_resume_after_interrupt_array(tmp_path, fmt):
    x = data(50)
    suf = ".zarr" if fmt == "zarr" else ".npy"
    explain_dataset(make(), x, tmp_path / f"ref{suf}", batch_size=8, quiet=True)
    ex = make()
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(ex, FailingArray(x, 4), tmp_path / f"s{suf}", batch_size=8, quiet=True)
    assert ex.rows == 24
    ex.rows = 0
    res = explain_dataset(ex, x, tmp_path / f"s{suf}", batch_size=8, quiet=True)
    assert ex.rows == 26 and res.computed_chunks == 4 and res.reused_chunks == 3
    same_store(tmp_path / f"ref{suf}", tmp_path / f"s{suf}")


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_writer_thread_error_surfaces_and_resumes(tmp_path, fmt, monkeypatch):
    """A chunk write failing in the writer thread: explain_dataset raises that same
    error, no chunk from the failing one on is marked done, and the same call resumes
    to the store of an uninterrupted run."""
    from fastlrp import dataset

    x = data(50)
    suf = ".zarr" if fmt == "zarr" else ".npy"
    explain_dataset(make(), x, tmp_path / f"ref{suf}", batch_size=8, quiet=True)
    write = dataset._Store.write_chunk

    def failing(self, c, *args):
        if c == 2:
            raise RuntimeError("disk gremlin at chunk 2")
        write(self, c, *args)

    monkeypatch.setattr(dataset._Store, "write_chunk", failing)
    with pytest.raises(RuntimeError, match="^disk gremlin at chunk 2$"):
        explain_dataset(make(), x, tmp_path / f"s{suf}", batch_size=8, quiet=True)
    done = np.asarray(load_store(tmp_path / f"s{suf}")["done"][:])
    assert done[:2].all() and not done[2:].any()
    monkeypatch.setattr(dataset._Store, "write_chunk", write)
    res = explain_dataset(make(), x, tmp_path / f"s{suf}", batch_size=8, quiet=True)
    assert res.computed_chunks == 5 and res.reused_chunks == 2
    same_store(tmp_path / f"ref{suf}", tmp_path / f"s{suf}")


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_dataset import make
    from fastlrp.dataset import explain_dataset
    x = np.load({x!r})
    class Killer:
        def __init__(self):
            self.shape, self.dtype, self.reads = x.shape, x.dtype, 0
        def __len__(self):
            return len(x)
        def __getitem__(self, s):
            self.reads += 1
            if self.reads == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a crash
            return x[s]
    explain_dataset(make(), Killer(), {out!r}, batch_size=8, quiet=True)
""")


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_resume_after_sigkill(tmp_path, fmt):
    x = data(60)
    np.save(tmp_path / "x.npy", x)
    suf = ".zarr" if fmt == "zarr" else ".npy"
    out = str(tmp_path / f"s{suf}")
    code = CHILD.format(tests=os.path.dirname(__file__), x=str(tmp_path / "x.npy"), out=out, kill_at=5)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    done = np.array(load_store(out)["done"][:])  # a copy: a memmap would see the resumed run
    assert 0 < np.count_nonzero(done) < 8
    ex = make()
    explain_dataset(ex, x, out, batch_size=8, quiet=True)
    assert ex.rows == 60 - 8 * np.count_nonzero(done)  # all chunks here are full
    explain_dataset(make(), x, tmp_path / f"ref{suf}", batch_size=8, quiet=True)
    same_store(tmp_path / f"ref{suf}", out)


def test_nonfinite(tmp_path):
    ex, x = make(), data(30)
    x[4, 0, 1, 1] = np.nan
    x[17, 0, 2, 2] = np.inf
    with pytest.warns(NonFiniteSamplesWarning, match=r"\[4, 17\]"):
        res = explain_dataset(ex, x, tmp_path / "s.zarr", batch_size=8, quiet=True)
    np.testing.assert_array_equal(res.nonfinite, [4, 17])
    st = load_store(tmp_path / "s.zarr")
    valid = st["valid"][:]
    assert valid.sum() == 28 and not valid[4] and not valid[17]
    R = st["relevance"][:]
    assert np.isnan(R[[4, 17]]).all() and np.isfinite(np.delete(R, [4, 17], axis=0)).all()
    assert (st["target"][:][[4, 17]] == -1).all()
    good = np.delete(np.arange(30), [4, 17])
    np.testing.assert_allclose(R[good], ex.explain(x[good]), atol=1e-12)
    with pytest.raises(InputError, match=r"\[4\]"):
        explain_dataset(ex, x, tmp_path / "r.zarr", batch_size=8, nonfinite="raise", quiet=True)


def test_seed_target_with_skipped_samples(tmp_path):
    ex, x = make(), data(20)
    x[3, 0, 0, 0] = np.nan
    x[13, 0, 1, 0] = np.inf
    seed = np.random.default_rng(7).normal(size=(20, 5))
    # 4 chunks explained together: every chunk's skipped samples are reported
    with pytest.warns(NonFiniteSamplesWarning, match=r"\[3, 13\]"):
        res = explain_dataset(ex, x, tmp_path / "s.zarr", target=seed, batch_size=16, chunk_size=4, quiet=True)
    np.testing.assert_array_equal(res.nonfinite, [3, 13])
    st = load_store(tmp_path / "s.zarr")
    good = np.delete(np.arange(20), [3, 13])
    np.testing.assert_allclose(st["relevance"][:][good], ex.explain(x[good], target=seed[good]), atol=1e-12)
    assert np.isnan(st["relevance"][:][[3, 13]]).all() and (st["target"][:] == -1).all()


def test_bad_inputs(tmp_path):
    ex = make()
    with pytest.raises(InputError, match=r"shape \(1, 5, 5\).*expects \(1, 6, 6\)"):
        explain_dataset(ex, np.zeros((10, 1, 5, 5), np.float32), tmp_path / "s.zarr", quiet=True)
    assert not (tmp_path / "s.zarr").exists()  # nothing written for a wrong input
    with pytest.raises(InputError, match="shape"):
        explain_dataset(ex, iter([np.zeros((4, 36))]), tmp_path / "s.zarr", quiet=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker / "s.zarr", blocker / "s.npy", tmp_path / "missing" / "s.npy"):
        with pytest.raises(OSError, match="cannot write the relevance store"):
            explain_dataset(ex, data(5), out, quiet=True)
    with pytest.raises(InputError, match="target"):
        explain_dataset(ex, data(5), tmp_path / "t.zarr", target=7, quiet=True)
    with pytest.raises(InputError, match="rows"):
        explain_dataset(ex, data(5), tmp_path / "t.zarr", target=np.zeros(4, int), quiet=True)
    with pytest.raises(InputError, match="needs the number of samples"):
        explain_dataset(ex, iter([data(5)]), tmp_path / "t.npy", quiet=True)


def test_refuses_other_store(tmp_path):
    x = data(20)
    out = tmp_path / "s.zarr"
    explain_dataset(make(), x, out, batch_size=8, quiet=True)
    with pytest.raises(StoreMismatchError, match="model"):
        explain_dataset(make(seed=5), x, out, batch_size=8, quiet=True)
    with pytest.raises(StoreMismatchError, match="composite"):
        explain_dataset(make("epsilon_alpha2_beta1_flat"), x, out, batch_size=8, quiet=True)
    with pytest.raises(StoreMismatchError, match="composite"):  # same name, other parameters
        a = fastlrp.Explainer(small_graph(), "epsilon_gamma_box(low=-3, high=3)", backend="reference")
        explain_dataset(a, x, tmp_path / "g.zarr", quiet=True)
        b = fastlrp.Explainer(small_graph(), "epsilon_gamma_box(low=-2, high=3)", backend="reference")
        explain_dataset(b, x, tmp_path / "g.zarr", quiet=True)
    with pytest.raises(StoreMismatchError, match="target"):
        explain_dataset(make(), x, out, target=2, batch_size=8, quiet=True)
    with pytest.raises(StoreMismatchError, match="20 samples"):
        explain_dataset(make(), data(25), out, batch_size=8, quiet=True)
    # untouched by the refusals
    assert load_store(out)["meta"]["composite"] == "epsilon_plus_flat"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreMismatchError, match="not a fastlrp"):
        explain_dataset(make(), x, other, quiet=True)
    (tmp_path / "plain.npy").write_bytes(b"x")
    with pytest.raises(StoreMismatchError, match="not a fastlrp"):
        explain_dataset(make(), x, tmp_path / "plain.npy", quiet=True)
    # overwrite replaces it
    res = explain_dataset(make(seed=5), x, out, batch_size=8, overwrite=True, quiet=True)
    assert res.computed == 20 and load_store(out)["meta"]["model"] == "small5"


def test_batch_size_from_memory_budget(tmp_path):
    ex = make()
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("512MB") == 512 * 10**6 and parse_bytes(100) == 100
    with pytest.raises(ValueError):
        parse_bytes("lots")
    small, big = auto_batch_size(ex, memory_budget="100kB"), auto_batch_size(ex, memory_budget="1GB")
    assert 1 <= small < big <= 1024
    assert auto_batch_size(ex, n_targets=5, memory_budget="100kB") < small
    res = explain_dataset(ex, data(40), tmp_path / "s.zarr", memory_budget="100kB", quiet=True)
    assert res.chunk_size == small and res.computed == 40


def test_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    explain_dataset(make(), data(20), tmp_path / "s.zarr", batch_size=8)
    err = capsys.readouterr().err
    assert "20/20" in err and "sample/s" in err
    explain_dataset(make(), data(20), tmp_path / "q.zarr", batch_size=8, quiet=True)
    assert capsys.readouterr().err == ""
