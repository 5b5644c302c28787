"""The command line (explain, heatmap, bench) and the built-in demo."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastlrp
from fastlrp import cli
from fastlrp.dataset import load_store

zarr = pytest.importorskip("zarr")


from _graphs import small_graph  # noqa: E402


def fastlrp_command() -> list:
    """``python -m fastlrp`` once the subcommands are wired into __main__, else ``python -m fastlrp.cli``."""
    try:
        from fastlrp.__main__ import build_parser

        if "demo" in build_parser().format_help():
            return [sys.executable, "-m", "fastlrp"]
    except Exception:  # noqa: BLE001
        pass
    return [sys.executable, "-m", "fastlrp.cli"]


def subprocess_env():
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlrp.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]))


def test_demo(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("tqdm")
    out = tmp_path / "demo"
    p = subprocess.run([*fastlrp_command(), "demo", "--out", str(out)], env=subprocess_env(), capture_output=True,
                       text=True, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "samples/s" in p.stdout and "sum R / logit" in p.stdout
    assert "1797/1797" in p.stderr  # the progress bar
    st = load_store(out / "relevance.zarr")
    assert st["relevance"].shape == (1797, 1, 8, 8) and st["meta"]["complete"]
    R, O, T = st["relevance"][:], st["output"][:], st["target"][:]
    ratio = R.reshape(1797, -1).sum(1) / O[np.arange(1797), T]
    assert 0.95 < np.median(ratio) < 1.05  # conservation
    with np.load(cli.demo_files()[0]) as z:
        assert (T == z["labels"]).mean() > 0.97
    png = out / "heatmaps.png"
    assert png.stat().st_size > 5000
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        # 4 rows of (an 11-pixel label strip over the 64-pixel panels), then a 32-pixel colour bar and its pad
        assert im.size == (10 * (64 + 4 + 64) + 11 * 4, 4 * (11 + 64) + 5 * 4 + 32 + 4)
        a = np.asarray(im).astype(int)
    assert a.std() > 30 and len(np.unique(a.reshape(-1, 3), axis=0)) > 200  # not blank
    red = (a[..., 0] > 200) & (a[..., 2] < 120) & (a[..., 1] < 120)
    assert red.sum() > 500  # positive evidence is shown in red


def test_explain_and_heatmap_commands(tmp_path, capsys):
    pytest.importorskip("PIL")
    g = small_graph()
    g.save(tmp_path / "model.npz")
    x = np.random.default_rng(0).normal(size=(30, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = [str(tmp_path / "model.npz"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.zarr"), "-q",
            "--backend", "reference", "-c", "epsilon_alpha2_beta1_flat", "-b", "8"]
    assert cli.main(["explain", *args]) == 0
    ex = fastlrp.Explainer(g, "epsilon_alpha2_beta1_flat", backend="reference")
    np.testing.assert_allclose(load_store(tmp_path / "r.zarr")["relevance"][:], ex.explain(x), atol=1e-12)
    assert "30 explained now" in capsys.readouterr().out
    assert cli.main(["explain", *args]) == 0  # resumed: nothing left to do
    assert "0 explained now" in capsys.readouterr().out
    # several targets per sample, then a heatmap of the second target over the input
    assert cli.main(["explain", *args[:3], str(tmp_path / "m.zarr"), *args[4:], "--target", "1,3"]) == 0
    np.testing.assert_allclose(load_store(tmp_path / "m.zarr")["relevance"][:],
                               ex.explain(x, target=np.tile([1, 3], (30, 1))), atol=1e-12)
    png = tmp_path / "h.png"
    assert cli.main(["heatmap", str(tmp_path / "m.zarr"), "-o", str(png), "-s", "0:12", "-k", "1",
                     "--input", str(tmp_path / "x.npy"), "--cmap", "coldnhot", "--ncols", "4"]) == 0
    from PIL import Image

    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (4 * 60 + 5 * 2, 3 * 60 + 4 * 2)  # 6x6 maps scaled by 10


def test_explain_command_errors(tmp_path, capsys):
    g = small_graph()
    g.save(tmp_path / "model.npz")
    np.save(tmp_path / "bad.npy", np.zeros((4, 1, 5, 5), np.float32))
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 6, 6), np.float32))
    base = [str(tmp_path / "model.npz")]
    assert cli.main(["explain", *base, str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.zarr"), "-q",
                     "--backend", "reference"]) == 1
    assert "expects (1, 6, 6)" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["explain", *base, str(tmp_path / "x.npy"), "-o", str(blocker / "o.zarr"), "-q",
                     "--backend", "reference"]) == 1
    assert "cannot write" in capsys.readouterr().err
    ok = ["explain", *base, str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.zarr"), "-q", "--backend", "reference"]
    assert cli.main(ok) == 0
    assert cli.main(ok + ["-c", "epsilon_plus"]) == 1
    assert "another composite" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "x.txt"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.zarr")]) == 1
    assert "not found" in capsys.readouterr().err


def test_torch_model_files(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(144, 5)).eval()
    x = np.random.default_rng(0).normal(size=(6, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in recent torch
        torch.jit.trace(m, torch.from_numpy(x[:1])).save(str(tmp_path / "m.pt"))
    ref = fastlrp.Explainer(fastlrp.from_torch(m, torch.from_numpy(x[:1])), "epsilon_plus",
                            backend="reference").explain(x)
    rc = cli.main(["explain", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "t.zarr"),
                   "-q", "--backend", "reference", "-c", "epsilon_plus"])
    assert rc == 0, capsys.readouterr().err  # TorchScript is converted through torch.export's converter
    np.testing.assert_allclose(load_store(tmp_path / "t.zarr")["relevance"][:], ref, rtol=1e-4, atol=1e-6)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert cli.main(["explain", str(tmp_path / "junk.pt"), str(tmp_path / "x.npy"), "-o",
                     str(tmp_path / "j.zarr"), "-q"]) == 1
    assert "neither a torch.export archive" in capsys.readouterr().err


def test_bench_command(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_bench_root", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "benchmark harness" in capsys.readouterr().err


def test_parser_wiring():
    import argparse

    parser = argparse.ArgumentParser(prog="fastlrp")
    cli.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", "d", "-q"])
    assert args.handler is cli.cmd_demo and args.out == "d" and args.quiet
    args = parser.parse_args(["explain", "m.npz", "x.npy", "-o", "r.zarr", "-t", "all"])
    assert args.handler is cli.cmd_explain and args.target == "all"
