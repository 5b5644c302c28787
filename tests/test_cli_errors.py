"""The command line never shows a traceback for a user's mistake: each error names
the file or flag (as the CLI spells it) and says what to do."""

from __future__ import annotations

import numpy as np
import pytest

import fastlrp
from fastlrp import cli
from fastlrp.dataset import explain_dataset

from _graphs import small_graph

pytest.importorskip("zarr")


@pytest.fixture
def files(tmp_path):
    g = small_graph()
    g.save(tmp_path / "model.npz")
    x = np.random.default_rng(1).normal(size=(6, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    explain_dataset(ex, x, tmp_path / "one.zarr", quiet=True)
    explain_dataset(ex, x, tmp_path / "two.zarr", target=np.tile([0, 2], (6, 1)), quiet=True)
    return tmp_path


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, out.err


def test_heatmap_target_index_is_checked(files, capsys):
    rc, err = run(capsys, "heatmap", files / "two.zarr", "-o", files / "h.png", "-k", "5")
    assert rc == 1 and "--target-index 5 is out of range" in err and "2 targets per sample (use 0..1)" in err
    rc, err = run(capsys, "heatmap", files / "one.zarr", "-o", files / "h.png", "-k", "3")
    assert rc == 1 and "one target per sample" in err
    rc, err = run(capsys, "heatmap", files / "two.zarr", "-o", files / "h.png", "-k", "1", "-s", "0:4")
    assert rc == 0 and (files / "h.png").stat().st_size > 100


def test_heatmap_bad_samples(files, capsys):
    rc, err = run(capsys, "heatmap", files / "one.zarr", "-o", files / "h.png", "-s", "a:b")
    assert rc == 1 and "--samples must be a range" in err
    rc, err = run(capsys, "heatmap", files / "one.zarr", "-o", files / "h.png", "-s", "0,99")
    assert rc == 1 and "the store has 6 samples" in err


def test_output_directories_are_created_with_a_message(files, capsys):
    out = files / "new" / "deeper" / "h.png"
    rc, err = run(capsys, "heatmap", files / "one.zarr", "-o", out)
    assert rc == 0 and out.exists() and f"created directory {out.parent}" in err
    store = files / "made" / "r.zarr"
    rc, err = run(capsys, "explain", files / "model.npz", files / "x.npy", "-o", store, "-q", "--backend", "reference")
    assert rc == 0 and store.exists() and f"created directory {store.parent}" in err


@pytest.mark.parametrize("damage", ["truncated", "one byte", "no nodes"])
def test_damaged_model_file(files, capsys, damage):
    path = files / "model.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "one byte":
        path.write_bytes(b"\x00")
    else:
        np.savez(path, __graph__=np.frombuffer(b'{"format": "fastlrp.graph", "version": 1, "output": "x"}', np.uint8))
    rc, err = run(capsys, "explain", path, files / "x.npy", "-o", files / "r.zarr", "-q")
    assert rc == 1 and str(path) in err
    assert {"truncated": "not a fastlrp graph file", "one byte": "not a fastlrp graph file",
            "no nodes": "no list of nodes"}[damage] in err
    assert "pickle" not in err


def test_torch_checkpoints_get_the_advice_first(files, capsys):
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    torch.save(m.state_dict(), files / "sd.pt")
    torch.save(m, files / "module.pth")
    torch.save(m.state_dict(), files / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("sd.pt", "module.pth", "legacy.pt"):
        assert cli.torch_file_kind(str(files / name)) == "checkpoint"
        rc, err = run(capsys, "explain", files / name, files / "x.npy", "-o", files / "r.zarr", "-q")
        assert rc == 1 and "is a torch.save checkpoint, not a model program" in err
        assert "load_state_dict" in err and "torch.export.save" in err
        assert len(err.splitlines()) == 1


def test_unknown_composite_and_backend(files, capsys):
    rc, err = run(capsys, "explain", files / "model.npz", files / "x.npy", "-o", files / "r.zarr", "-q",
                  "-c", "no_such_composite")
    assert rc == 1 and "no_such_composite" in err
    rc, err = run(capsys, "explain", files / "model.npz", files / "x.npy", "-o", files / "r.zarr", "-q",
                  "--backend", "tpu")
    assert rc == 1 and "tpu" in err


def test_unexpected_errors_are_one_line_and_say_how_to_debug(files, capsys, monkeypatch):
    def boom(args):
        raise AssertionError("internal invariant")

    monkeypatch.setitem(cli.COMMANDS, "info", (cli.COMMANDS["info"][0], None, boom))
    rc, err = run(capsys, "info")
    assert rc == 1 and "AssertionError: internal invariant" in err and "FASTLRP_DEBUG=1" in err
    monkeypatch.setenv("FASTLRP_DEBUG", "1")
    with pytest.raises(AssertionError):
        cli.main(["info"])
