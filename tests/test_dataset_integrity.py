"""Store integrity: a changed source is refused, damaged chunks are found and
recomputed, kills and full disks leave a store that resumes, verify_store and
``fastlrp verify`` say what is wrong. Every recovered store is compared bitwise
with an uninterrupted run."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastlrp
from fastlrp import cli
from fastlrp.dataset import StoreDamageWarning, StoreMismatchError, explain_dataset, verify_store

pytest.importorskip("zarr")

from test_dataset import FailingArray, data, make, same_store  # noqa: E402

FMTS = ["zarr", "npy"]


def run(x, out, **kw):
    kw = {"batch_size": 8, "quiet": True, **kw}
    return explain_dataset(make(), x, out, **kw)


def reference(tmp_path, x, fmt, name="ref"):
    out = tmp_path / f"{name}.{fmt}"
    run(x, out)
    return out


def chunk_file(store, name, c):
    """The file holding chunk c of array ``name`` of a zarr store (zarr 3 or 2 layout)."""
    pats = [os.path.join(store, name, "c", str(c)), os.path.join(store, name, "c", str(c), "**"),
            os.path.join(store, name, f"{c}.*"), os.path.join(store, name, f"{c}")]
    hits = sorted({p for pat in pats for p in glob.glob(pat, recursive=True) if os.path.isfile(p)})
    assert len(hits) == 1, hits
    return hits[0]


def npy_offset(path, row):
    """The byte offset of ``row`` in a .npy file."""
    a = np.load(path, mmap_mode="r")
    return a.offset + row * a[0].nbytes


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def damage(out, fmt, how, c):
    """Damage chunk c of the relevance array: delete, flip a byte in, or truncate its file."""
    if fmt == "zarr":
        f = chunk_file(str(out), "relevance", c)
        if how == "delete":
            os.remove(f)
        elif how == "flip":
            flip_byte(f, os.path.getsize(f) // 2)
        else:
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
    else:
        path = str(out)
        if how == "delete":
            os.remove(path)
        elif how == "flip":
            flip_byte(path, npy_offset(path, 8 * c + 3) + 5)
        else:
            with open(path, "r+b") as fh:
                fh.truncate(npy_offset(path, 8 * c + 3))


# ------------------------------------------------------------------------------------------
# a changed source


@pytest.mark.parametrize("fmt", FMTS)
def test_source_changed_after_complete_run(tmp_path, fmt):
    x = data(50)
    out = reference(tmp_path, x, fmt, "s")
    keep = reference(tmp_path, x, fmt, "keep")
    y = x.copy()
    y[35, 0, 2, 2] += 1.0  # chunk 4 of 7
    ex = make()
    with pytest.raises(StoreMismatchError, match=r"chunk\(s\) 4 \(samples 32-39\)") as e:
        explain_dataset(ex, y, out, batch_size=8, quiet=True)
    assert "overwrite=True" in str(e.value) and "--overwrite" in str(e.value)
    assert ex.rows == 0  # refused before anything was computed
    same_store(keep, out)  # left as it was
    report = verify_store(out, source=y)
    assert not report.ok and report.changed_chunks == [4] and verify_store(out, source=x).ok
    res = explain_dataset(make(), y, out, batch_size=8, quiet=True, overwrite=True)
    assert res.computed == 50
    same_store(reference(tmp_path, y, fmt, "new"), out)


@pytest.mark.parametrize("fmt", FMTS)
def test_source_changed_in_a_later_finished_chunk_of_a_partial_store(tmp_path, fmt):
    x = data(50)
    out = tmp_path / f"s.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        run(FailingArray(x, 4), out)  # chunks 0, 1, 2 done
    y = x.copy()
    y[17] = 0.5  # chunk 2
    with pytest.raises(StoreMismatchError, match=r"chunk\(s\) 2 \(samples 16-23\)"):
        run(y, out)
    res = run(x, out)  # the right source resumes
    assert res.computed == 26 and res.reused_chunks == 3
    same_store(reference(tmp_path, x, fmt), out)


def test_source_changed_iterable(tmp_path):
    x = data(40)
    out = tmp_path / "s.zarr"
    run(x, out)
    y = x.copy()
    y[30] *= 2  # chunk 3 of 5
    with pytest.raises(StoreMismatchError, match=r"chunk\(s\) 3 \(samples 24-31\).*no shuffling"):
        run((y[a:a + 5] for a in range(0, 40, 5)), out)
    assert verify_store(out, source=x).ok
    assert verify_store(out, source=(y[a:a + 5] for a in range(0, 40, 5))).changed_chunks == [3]


# ------------------------------------------------------------------------------------------
# damaged chunks


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("how", ["delete", "flip", "truncate"])
def test_damaged_chunk_is_found_and_recomputed(tmp_path, fmt, how):
    x = data(50)
    ref = reference(tmp_path, x, fmt)
    out = reference(tmp_path, x, fmt, "s")
    damage(out, fmt, how, 3)
    report = verify_store(out, source=x)
    assert not report.ok and report.changed_chunks == []
    if fmt == "npy" and how == "delete":  # the whole relevance file: every chunk is lost
        assert any("missing" in p for p in report.problems)
        lost = list(range(7))
    else:
        lost = [3, 4, 5, 6] if fmt == "npy" and how == "truncate" else [3]  # a .npy file loses its tail
        assert report.damaged_chunks == lost
    ex = make()
    with pytest.warns(StoreDamageWarning):
        res = explain_dataset(ex, x, out, batch_size=8, quiet=True)
    assert res.damaged_chunks == lost and res.reused_chunks == 7 - len(lost)
    assert ex.rows == sum(min(8, 50 - 8 * c) for c in lost)
    same_store(ref, out)
    assert verify_store(out, source=x).ok


@pytest.mark.parametrize("fmt", FMTS)
def test_damaged_done_record_is_recomputed_not_called_a_changed_source(tmp_path, fmt):
    x = data(30)
    ref = reference(tmp_path, x, fmt)
    out = reference(tmp_path, x, fmt, "s")
    if fmt == "zarr":
        flip_byte(chunk_file(str(out), "done", 1), os.path.getsize(chunk_file(str(out), "done", 1)) - 3)
        os.remove(chunk_file(str(out), "checksum", 2))
    else:
        p = str(out)[:-4] + ".done.npy"
        flip_byte(p, npy_offset(p, 1) + 2)
        p = str(out)[:-4] + ".checksum.npy"
        flip_byte(p, npy_offset(p, 2) + 7)
    report = verify_store(out)
    assert 2 in report.damaged_chunks and set(report.damaged_chunks + report.missing_chunks) == {1, 2}
    with pytest.warns(StoreDamageWarning):
        res = run(x, out)
    assert res.computed == 16
    same_store(ref, out)


def test_valid_flags_inconsistent_with_relevance(tmp_path):
    from fastlrp.dataset import stored_hash

    x = data(20)
    out = reference(tmp_path, x, "zarr", "s")
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(out), mode="r+")
    g["relevance"][9] = np.nan  # as a deleted chunk read back used to look: NaN, marked valid
    rows = [np.asarray(g[k][8:16]) for k in ("relevance", "output", "target", "valid")]
    g["checksum"][1] = stored_hash(g["done"][1], rows)  # with a matching checksum: only the flags tell
    report = verify_store(out)
    assert report.damaged_chunks == [1] and "valid 1" in report.problems[0]


# ------------------------------------------------------------------------------------------
# kills at any moment (from the creation on), full disks


class Interrupt(BaseException):
    pass


FS_CALLS = ("open", "pwrite", "replace", "rename", "mkdir", "posix_fallocate", "ftruncate", "fsync")


def _run_interrupted(monkeypatch, x, out, k):
    """Run, raising Interrupt at the k-th file-system call (k=0: never); the calls made.
    ``x`` is an array or a function giving an iterable."""
    calls = []

    def counting(name, fn):
        def call(*a, **kw):
            calls.append(name)
            if len(calls) == k:
                raise Interrupt(f"interrupted at call {k} ({name})")
            return fn(*a, **kw)
        return call

    with monkeypatch.context() as m:
        for name in FS_CALLS:
            if hasattr(os, name):
                m.setattr(os, name, counting(name, getattr(os, name)))
        try:
            run(x() if callable(x) else x, out, chunk_size=8)
        except Interrupt:
            pass
    return calls


@pytest.mark.parametrize("fmt,source", [("zarr", "array"), ("npy", "array"), ("zarr", "iterable")])
def test_interrupted_at_every_filesystem_call_resumes(tmp_path, fmt, source, monkeypatch):
    """An interruption at the k-th file-system call of a run (creation included):
    the next run completes the store, bitwise as an uninterrupted run. Every call
    of the creation is tried (zarr: up to the rename into place), then every
    fourth call while chunks are written. An iterable of unknown length grows the
    zarr store as it goes (every sixth call tried, then resumed from the array)."""
    x = data(12)
    ref = reference(tmp_path, x, fmt)
    src = (lambda: (x[a:a + 5] for a in range(0, 12, 5))) if source == "iterable" else x
    calls = _run_interrupted(monkeypatch, src, tmp_path / f"all.{fmt}", 0)
    made = calls.index("rename") + 1 if fmt == "zarr" else len(calls)
    assert made > 10
    points = [*range(1, made + 2), *range(made + 2, len(calls) + 1, 4)] if source == "array" else \
        range(1, len(calls) + 1, 6)
    for k in points:
        out = tmp_path / f"s{k}.{fmt}"
        _run_interrupted(monkeypatch, src, out, k)
        run(x, out)
        same_store(ref, out)


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_dataset import make
    from fastlrp.dataset import explain_dataset
    x = np.load({x!r})
    ex = make()
    print("go", flush=True)
    explain_dataset(ex, x, {out!r}, batch_size=8, quiet=True)
    print("done", flush=True)
""")


@pytest.mark.parametrize("fmt", FMTS)
def test_sigkill_soon_after_start_resumes(tmp_path, fmt):
    """SIGKILL at a random moment in the first 10 ms of explain_dataset (while the
    store is made); the interruption test above tries every such moment in turn."""
    x = data(40)
    np.save(tmp_path / "x.npy", x)
    ref = reference(tmp_path, x, fmt)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = str(tmp_path / f"s.{fmt}")
    delay = float(np.random.default_rng().uniform(0, 0.01))
    code = CHILD.format(tests=os.path.dirname(__file__), x=str(tmp_path / "x.npy"), out=out)
    with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as p:
        assert p.stdout.readline().strip() == b"go", p.stderr.read().decode()
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    try:
        run(x, out)
        same_store(ref, out)
    except Exception as e:
        raise AssertionError(f"resume after a SIGKILL {delay * 1000:.2f} ms after the start failed") from e


@pytest.mark.parametrize("fmt", FMTS)
def test_leftovers_of_a_killed_creation(tmp_path, fmt):
    """What a kill during the atomic metadata write or the zarr creation leaves."""
    x = data(20)
    ref = reference(tmp_path, x, fmt)
    out = tmp_path / f"s.{fmt}"
    if fmt == "npy":
        (tmp_path / "s.json.12345.tmp").write_text('{"format": "fastlrp.rel')  # half a temporary file
    else:
        (tmp_path / "s.zarr.fastlrp-new-12345").mkdir()  # a half-made store, not yet renamed into place
        (tmp_path / "s.zarr.fastlrp-new-12345" / "zarr.json").write_text("{")
    run(x, out)
    same_store(ref, out)
    assert not (tmp_path / "s.zarr.fastlrp-new-12345").exists()


def test_npy_store_files_missing_after_metadata(tmp_path):
    """A kill after the .npy store's metadata file and before its arrays: they are
    made and the run resumes (nothing was recorded, nothing is lost). A records file
    deleted from a store with data is rebuilt with a warning."""
    x = data(20)
    ref = reference(tmp_path, x, "npy")
    out = tmp_path / "s.npy"
    run(x, out)
    for suffix in (".npy", ".output.npy", ".target.npy", ".valid.npy", ".done.npy", ".checksum.npy"):
        os.remove(str(out)[:-4] + suffix)
    assert run(x, out).computed == 20
    same_store(ref, out)
    os.remove(str(out)[:-4] + ".done.npy")
    with pytest.warns(StoreDamageWarning, match=r"done\.npy: missing"):
        assert run(x, out).computed == 20
    same_store(ref, out)


def test_damaged_metadata_is_refused_clearly(tmp_path):
    x = data(20)
    out = reference(tmp_path, x, "npy", "s")
    meta = str(out)[:-4] + ".json"
    with open(meta) as f:
        text = f.read()
    with open(meta, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(StoreMismatchError, match=r"damaged.*--overwrite"):
        run(x, out)
    assert not verify_store(out).ok
    res = run(x, out, overwrite=True)
    assert res.computed == 20


@pytest.mark.parametrize("fmt", FMTS)
def test_store_of_the_previous_format_is_refused(tmp_path, fmt):
    x = data(20)
    out = reference(tmp_path, x, fmt, "s")
    if fmt == "npy":
        p = str(out)[:-4] + ".json"
        with open(p) as f:
            meta = json.load(f)
        meta["version"] = 1
        with open(p, "w") as f:
            json.dump(meta, f)
    else:
        zarr = pytest.importorskip("zarr")
        g = zarr.open_group(str(out), mode="r+")
        meta = dict(g.attrs["fastlrp"])
        meta["version"] = 1
        g.attrs["fastlrp"] = meta
    with pytest.raises(StoreMismatchError, match=r"earlier fastlrp.*no checksums.*--overwrite"):
        run(x, out)
    assert "earlier fastlrp" in verify_store(out).problems[0]


def _enospc_after(k, fn):
    count = [0]

    def call(*a, **kw):
        count[0] += 1
        if count[0] > k:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fn(*a, **kw)
    return call


@pytest.mark.parametrize("at", ["creation", "chunk"])
def test_npy_full_disk_is_an_oserror_and_resumes(tmp_path, monkeypatch, at):
    """A full disk (simulated ENOSPC) while the .npy store is allocated or a chunk is
    written: an OSError naming the file; after space is freed the run resumes."""
    x = data(50)
    ref = reference(tmp_path, x, "npy")
    out = tmp_path / "s.npy"
    with monkeypatch.context() as m:
        if at == "creation":
            m.setattr(os, "posix_fallocate", _enospc_after(2, os.posix_fallocate))
        else:
            m.setattr(os, "pwrite", _enospc_after(6 + 6 * 3 + 2, os.pwrite))  # headers, 3 chunks, part of one
        with pytest.raises(OSError) as e:
            run(x, out)
    assert e.value.errno == errno.ENOSPC and str(tmp_path) in str(e.value) and "resumes" in str(e.value)
    res = run(x, out)  # space freed
    assert res.computed == (50 if at == "creation" else 26)
    same_store(ref, out)


def _mount_small_tmpfs(where, size):
    where.mkdir()
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a small file system here ({e})")
    if p.returncode:
        pytest.skip(f"cannot mount a small file system here: {p.stderr.decode().strip()}")


@pytest.mark.parametrize("fmt", FMTS)
def test_real_full_disk_small_tmpfs(tmp_path, fmt):
    """On a real 512 KiB file system (where this process may mount one): a full disk
    mid-run is an OSError, never SIGBUS; after space is freed the run resumes."""
    x = data(50)
    ref = reference(tmp_path, x, fmt)
    disk = tmp_path / "disk"
    _mount_small_tmpfs(disk, "512k")
    try:
        filler = disk / "filler"
        st = os.statvfs(disk)
        free = st.f_bavail * st.f_frsize
        leave = 24 * 1024 if fmt == "npy" else 80 * 1024  # npy needs ~35 KB; zarr ~100 KB in 4 KB pages
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - leave))
        out = disk / f"s.{fmt}"
        with pytest.raises(OSError) as e:
            run(x, out)
        assert e.value.errno == errno.ENOSPC and str(disk) in str(e.value)
        os.remove(filler)  # space freed
        run(x, out)
        same_store(ref, out)
        assert verify_store(out, source=x).ok
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# ------------------------------------------------------------------------------------------
# verify_store and fastlrp verify


@pytest.mark.parametrize("fmt", FMTS)
def test_verify_store(tmp_path, fmt):
    x = data(50)
    out = reference(tmp_path, x, fmt, "s")
    report = fastlrp.verify_store(out, source=x)
    assert report.ok and report.done_chunks == report.n_chunks == 7 and "OK" in str(report)
    np.save(tmp_path / "x.npy", x)
    assert verify_store(out, source=str(tmp_path / "x.npy")).ok
    assert "fewer samples" in " ".join(verify_store(out, source=x[:40]).problems)
    part = tmp_path / f"p.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        run(FailingArray(x, 4), part)
    report = verify_store(part)
    assert not report.ok and report.missing_chunks == [3, 4, 5, 6] and "not computed yet" in str(report)
    with pytest.raises(FileNotFoundError):
        verify_store(tmp_path / f"nothing.{fmt}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert "not a fastlrp" in verify_store(tmp_path / "notes").problems[0]


def test_cli_verify(tmp_path, capsys):
    x = data(30)
    np.save(tmp_path / "x.npy", x)
    out = reference(tmp_path, x, "zarr", "s")
    assert cli.main(["verify", str(out), "--source", str(tmp_path / "x.npy"), "-q"]) == 0
    assert "OK" in capsys.readouterr().out
    damage(out, "zarr", "flip", 2)
    assert cli.main(["verify", str(out), "-q"]) == 1
    text = capsys.readouterr().out
    assert "chunk 2 (samples 16-23)" in text and "Traceback" not in text
    for bad in (str(tmp_path / "missing.zarr"), str(tmp_path / "x.npy")):
        assert cli.main(["verify", bad, "-q"]) in (1, 2)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out and (captured.err or "not a fastlrp" in captured.out)
    shutil.rmtree(out)
    assert cli.main(["verify", str(out)]) == 2
    assert "no relevance store" in capsys.readouterr().err
