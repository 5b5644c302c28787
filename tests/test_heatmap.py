"""Heatmap rendering: colour maps (zennit's names and look), normalisation, grids, PNG."""

from __future__ import annotations

import numpy as np
import pytest

from fastlrp import heatmap as hm


def test_colormap_definitions():
    bwr = hm.palette("bwr")
    assert bwr.shape == (256, 3) and bwr.dtype == np.uint8
    assert tuple(bwr[0]) == (0, 0, 255) and tuple(bwr[255]) == (255, 0, 0)
    assert tuple(bwr[128]) == (255, 255, 255)  # white at the centre (position 0x80)
    gray = hm.palette("gray")
    np.testing.assert_array_equal(gray[:, 0], np.arange(256))
    hot = hm.palette("hot")
    assert tuple(hot[0]) == (0, 0, 0) and tuple(hot[85]) == (255, 0, 0) and tuple(hot[170]) == (255, 255, 0)
    assert tuple(hot[255]) == (255, 255, 255)
    cnh = hm.palette("coldnhot")
    assert tuple(cnh[0]) == (0, 255, 255) and tuple(cnh[128]) == (0, 0, 0) and tuple(cnh[255]) == (255, 255, 255)
    seis = hm.palette("seismic")
    assert tuple(seis[0]) == (0, 0, 0xd0) and tuple(seis[128]) == (0xd0,) * 3 and tuple(seis[255]) == (0xd0, 0, 0)
    for name in ("wred", "wblue", "cold", "france", "coolio", "coleus", "grey"):
        assert hm.palette(name).shape == (256, 3)
    # level: steeper (>1) saturates earlier; the centre stays
    assert tuple(hm.palette("bwr", 2.0)[200]) == (255, 0, 0)
    assert hm.palette("bwr", 0.5)[128].min() >= 254 and hm.palette("bwr", 0.5)[0, 2] == 255
    # custom stops, and errors
    np.testing.assert_array_equal(hm.palette("000,fff"), gray)
    assert tuple(hm.palette("40:f00,c0:00f")[0]) == (255, 0, 0)
    with pytest.raises(ValueError, match="unknown colour map"):
        hm.get_cmap("viridis2")
    with pytest.raises(ValueError, match="positions must increase"):
        hm.ColorMap("c0:f00,40:00f")


def test_palettes_match_zennit():
    from conftest import import_zennit

    import_zennit()
    zimage = pytest.importorskip("zennit.image")
    for name in hm.COLORMAPS:
        for level in (0.5, 1.0, 2.0):
            theirs = np.asarray(zimage.palette(name, level)).reshape(-1, 3)
            np.testing.assert_array_equal(hm.palette(name, level), theirs, err_msg=f"{name} level {level}")


def test_normalize_and_heatmap():
    r = np.array([[-2.0, 0.0], [1.0, 2.0]])
    u = hm.normalize(r)
    np.testing.assert_allclose(u, [[0.0, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(hm.normalize(r, symmetric=False), [[0, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(hm.normalize(np.zeros((2, 2))), 0.5)
    img = hm.heatmap(r)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (0, 0, 255) and tuple(img[1, 1]) == (255, 0, 0)
    assert img[0, 1].min() >= 250  # zero: the white centre (index 127, as zennit quantises)
    # channels are summed; channels-first and -last give the same map
    R = np.random.default_rng(0).normal(size=(3, 5, 7))
    np.testing.assert_array_equal(hm.heatmap(R), hm.heatmap(R.sum(0)))
    np.testing.assert_array_equal(hm.heatmap(np.moveaxis(R, 0, -1)), hm.heatmap(R.sum(0)))
    assert hm.heatmap(R, scale=4).shape == (20, 28, 3)
    # feature vectors become a strip; NaN gets its own colour
    v = np.array([1.0, np.nan, -1.0])
    strip = hm.heatmap(v)
    assert strip.shape == (1, 3, 3) and tuple(strip[0, 1]) == (128, 128, 128)
    with pytest.raises(ValueError):
        hm.heatmap(np.zeros((2, 2, 2, 2)))


def test_overlay_and_grid():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1, 8, 8))
    r = np.zeros((1, 8, 8))
    r[0, 2, 3] = 1.0
    over = hm.heatmap(r, image=x, cmap="bwr")
    base = np.round(hm.input_image(x) * 255)
    # no relevance: the input shows through unchanged
    assert np.abs(over[0, 0].astype(int) - base[0, 0]).max() <= 1
    assert over[2, 3, 0] > over[2, 3, 2]  # the relevant pixel is red-tinted
    R = rng.normal(size=(5, 1, 8, 8))
    g = hm.heatmap_grid(R, ncols=3, pad=2, scale=2)
    assert g.shape == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2, 3)
    g2 = hm.heatmap_grid(R, images=rng.uniform(size=(5, 1, 8, 8)), ncols=5, side_by_side=True, pad=1)
    assert g2.shape == (8 + 2, 5 * (8 + 1 + 8) + 6, 3)
    shared = hm.heatmap_grid(np.stack([R[0], 10 * R[0]]), shared_norm=True, ncols=2, pad=0)
    assert np.abs(shared[:, :8].astype(int) - 255).max() < np.abs(shared[:, 8:].astype(int) - 255).max()


def test_save_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    R = np.random.default_rng(2).normal(size=(6, 3, 10, 10))
    p = hm.save_heatmap(R, tmp_path / "g.png", grid=True, cmap="coldnhot", scale=3)
    with Image.open(p) as im:
        assert im.mode == "RGB" and im.format == "PNG"
        a = np.asarray(im)
    np.testing.assert_array_equal(a, hm.heatmap_grid(R, cmap="coldnhot", scale=3))
    hm.save_heatmap(R[0], tmp_path / "one.png")
    with Image.open(tmp_path / "one.png") as im:
        assert im.size == (10, 10)


def test_png_without_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    a = hm.heatmap_grid(np.random.default_rng(3).normal(size=(3, 5, 7)), scale=2)
    hm._write_png(a, str(tmp_path / "plain.png"))  # the fallback writer, read back with Pillow
    with Image.open(tmp_path / "plain.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), a)


# ------------------------------------------------------------------------------------------
# text, labels and the colour bar

LABEL_CHARS = "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz" + " -.:=+#/()"


def test_font():
    masks = {c: hm.text_mask(c) for c in LABEL_CHARS}
    assert all(m.shape == (9, 5) for m in masks.values())
    assert not masks[" "].any() and all(masks[c].any() for c in LABEL_CHARS if c != " ")
    # every character the labels need has its own glyph (none falls back to '?', no two alike)
    seen = {masks[c].tobytes(): c for c in LABEL_CHARS}
    assert len(seen) == len(LABEL_CHARS) and hm.text_mask("?").tobytes() not in seen
    np.testing.assert_array_equal(hm.text_mask("\u00e9"), hm.text_mask("?"))  # unknown characters
    # sizes: 6 pixels a character (5 + 1 apart), 10 a line (9 + 1 apart), then enlarged
    assert hm.text_size("#12 t=3 p=5") == (9, 11 * 6 - 1)
    assert hm.text_size("ab\ncde", 3) == (19 * 3, 17 * 3) and hm.text_mask("ab\ncde", 3).shape == (57, 51)
    m = hm.text_mask("-0.5e+01")
    np.testing.assert_array_equal(hm.text_mask("-0.5e+01", 2), np.kron(m, np.ones((2, 2), dtype=bool)))
    np.testing.assert_array_equal(m[:, 6:11], masks["0"])  # the second character, one column after the first
    # drawn into an image: ink where the mask is, nothing else touched; clipped at the edges
    img = np.full((12, 20, 3), 255, np.uint8)
    hm.draw_text(img, "0", 3, 2, color=(255, 0, 0))
    ink = np.zeros((12, 20), bool)
    ink[2:11, 3:8] = masks["0"]
    assert (img[ink] == (255, 0, 0)).all() and (img[~ink] == 255).all()
    hm.draw_text(img, "1234", 16, -4)  # partly outside: no error
    assert (img[:5, 16:] == 0).any()


def test_grid_labels():
    R = np.random.default_rng(4).normal(size=(5, 1, 8, 8))
    labels = ["#0 t=1 p=2", "#1", None, "#3 t=0", "#4 t=4 p=4"]
    g = hm.heatmap_grid(R, ncols=3, pad=2, scale=4, labels=labels)
    cw = 10 * 6 - 1 + 6  # the widest label and a space: wider than the 32-pixel panels
    strip = 10 + 1
    assert g.shape == (2 * (strip + 32) + 3 * 2, 3 * cw + 4 * 2, 3)
    for i, text in enumerate(labels):
        r, c = divmod(i, 3)
        y, x = 2 + r * (strip + 32 + 2), 2 + c * (cw + 2)
        # the panel itself, centred under its label, is exactly the heatmap: no text on the map
        px = x + (cw - 32) // 2
        np.testing.assert_array_equal(g[y + strip:y + strip + 32, px:px + 32], hm.heatmap(R[i], scale=4))
        # the label strip holds the label's glyphs, centred, one pixel down, black on white
        area = g[y:y + strip, x:x + cw]
        want = np.zeros((strip, cw), bool)
        m = hm.text_mask(text or "")
        tx = (cw - m.shape[1]) // 2
        want[1:1 + m.shape[0], tx:tx + m.shape[1]] = m
        np.testing.assert_array_equal(area.min(axis=-1) == 0, want, err_msg=f"label {text!r}")
        assert ((area == 0).all(-1) | (area == 255).all(-1)).all()
    # a "0" and a "1" differ where their glyphs are drawn; panels as wide as the text keep their width
    g0 = hm.heatmap_grid(R[:1], scale=4, pad=0, labels=["0"])
    g1 = hm.heatmap_grid(R[:1], scale=4, pad=0, labels=["1"])
    assert g0.shape == g1.shape == (11 + 32, 32, 3)
    diff = np.argwhere((g0 != g1).any(-1))
    assert diff.size and diff[:, 0].max() < 11 and 13 <= diff[:, 1].min() and diff[:, 1].max() < 19
    # two-line labels give every panel a two-line strip; larger text with text_scale
    assert hm.heatmap_grid(R[:2], scale=4, pad=0, labels=["a\nb", "c"]).shape == (21 + 32, 2 * 32, 3)
    assert hm.heatmap_grid(R[:2], scale=4, pad=0, labels=["a", "c"], text_scale=2).shape == (22 + 32, 2 * 32, 3)
    # defaults: the grid of the panels as before
    np.testing.assert_array_equal(hm.heatmap_grid(R, ncols=3, scale=4),
                                  hm.image_grid([hm.heatmap(R[i], scale=4) for i in range(5)], ncols=3))
    with pytest.raises(ValueError, match="2 labels for 5 grid tiles"):
        hm.heatmap_grid(R, labels=["a", "b"])


def _bar_colors(g, top):
    """The colours inside the colour bar's frame, left to right, and the frame's left/right columns."""
    row = g[top + 4]
    frame = np.flatnonzero((row == 128).all(-1))
    return row[frame[0] + 1:frame[-1]], frame


def test_colorbar():
    R = np.random.default_rng(5).normal(size=(4, 6, 6))
    R *= 0.5 / np.abs(R).max()  # max |R| over all samples: 0.5
    plain = hm.heatmap_grid(R, ncols=4, scale=8, shared_norm=True, cmap="gray")
    g = hm.heatmap_grid(R, ncols=4, scale=8, shared_norm=True, cmap="gray", colorbar=True)
    k = 1  # 48-pixel panels: the font is not enlarged
    bar_h = 8 * k + 2 + 1 + (10 + 1) * k
    assert g.shape == (plain.shape[0] + bar_h + 2, plain.shape[1], 3)
    np.testing.assert_array_equal(g[:plain.shape[0]], plain)  # the grid is unchanged above the bar
    colors, frame = _bar_colors(g, plain.shape[0])
    assert frame[0] == 2 and frame[-1] == g.shape[1] - 3  # the bar spans the grid, pad pixels in
    pal = hm.palette("gray")
    idx = colors[:, 0].astype(int)  # gray: entry j is (j, j, j)
    assert (colors == pal[idx]).all() and idx[0] == 0 and idx[-1] == 255 and (np.diff(idx) >= 0).all()
    assert (np.diff(idx) <= 2).all()  # a smooth gradient (width 4 * 48 + 10 - 6 pixels for 256 steps)
    # the value range under the ends and the centre
    ty = plain.shape[0] + 8 * k + 2 + 1 + k
    text = g[ty:ty + 9].min(axis=-1) == 0
    left, mid, right = hm.text_mask("-0.5"), hm.text_mask("0"), hm.text_mask("+0.5")
    np.testing.assert_array_equal(text[:, 2:2 + left.shape[1]], left)
    np.testing.assert_array_equal(text[:, g.shape[1] - 2 - right.shape[1]:g.shape[1] - 2], right)
    c = 2 + (g.shape[1] - 4 - mid.shape[1]) // 2
    np.testing.assert_array_equal(text[:, c:c + mid.shape[1]], mid)
    # the palette's colours in order for a diverging map too: blue, white at the centre, red
    bwr = hm.heatmap_grid(R, ncols=4, scale=8, colorbar=True)
    colors, _ = _bar_colors(bwr, plain.shape[0])
    pal = hm.palette("bwr")
    assert tuple(colors[0]) == tuple(pal[0]) and tuple(colors[-1]) == tuple(pal[255])
    assert colors[len(colors) // 2].min() >= 250
    assert (np.diff(colors[:, 0].astype(int)[: len(colors) // 2]) >= 0).all()  # red rises up to white
    assert (np.diff(colors[:, 2].astype(int)[len(colors) // 2:]) <= 0).all()  # then blue falls
    # per-sample normalisation: "-max 0 +max" and a caption line; a narrow grid widens to the text
    assert bwr.shape[0] == g.shape[0] + 10 * k
    small = hm.heatmap_grid(R[:1], pad=1, colorbar=True)
    need = hm.text_size("each panel scaled to its own max |R|")[1] + 2 * 2
    assert small.shape == (6 + 2 + bar_h + 10 + 1, need, 3)
    np.testing.assert_array_equal(small[:8, :8], hm.heatmap_grid(R[:1], pad=1))


def test_shared_norm_unsymmetric():
    R = np.stack([np.linspace(0, 1, 16).reshape(4, 4), np.linspace(2, 5, 16).reshape(4, 4)])
    g = hm.heatmap_grid(R, ncols=2, pad=0, shared_norm=True, symmetric=False)
    for i in range(2):
        np.testing.assert_array_equal(g[:, 4 * i:4 * i + 4], hm.heatmap(R[i], symmetric=False, vmin=0, vmax=5))
    bar = hm.heatmap_grid(R, ncols=2, pad=0, shared_norm=True, symmetric=False, colorbar=True)
    ty = 4 + 8 + 2 + 1 + 1
    text = bar[ty:ty + 9].min(axis=-1) == 0
    m = hm.text_mask("+2.5")  # the middle of [0, 5]
    c = 2 + (bar.shape[1] - 4 - m.shape[1]) // 2
    np.testing.assert_array_equal(text[:, c:c + m.shape[1]], m)


def test_store_labels():
    out = np.random.default_rng(6).normal(size=(5, 4))
    out[3] = np.nan
    store = {"target": np.array([1, 2, -1, 0, 3]), "output": out, "valid": np.array([1, 1, 1, 1, 0]),
             "meta": {"multi_target": False}}
    p = out.argmax(axis=1)
    assert hm.store_labels(store) == [f"#0 t=1 p={p[0]}", f"#1 t=2 p={p[1]}", f"#2 p={p[2]}", "#3 t=0", "#4 skipped"]
    assert hm.store_labels(store, [4, 1]) == ["#4 skipped", f"#1 t=2 p={p[1]}"]
    multi = {"target": np.array([[1, 3], [0, 2]]), "output": out[:2], "meta": {"multi_target": True}}
    assert hm.store_labels(multi, target_index=1) == [f"#0 t=3 p={p[0]}", f"#1 t=2 p={p[1]}"]


def test_heatmap_command_labels_and_colorbar(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    import fastlrp
    from fastlrp import cli
    from fastlrp.dataset import explain_dataset, load_store

    from _graphs import small_graph

    x = np.random.default_rng(7).normal(size=(6, 1, 6, 6)).astype(np.float32)
    ex = fastlrp.Explainer(small_graph(), "epsilon_plus", backend="reference")
    explain_dataset(ex, x, tmp_path / "r.npy", quiet=True)
    base = ["heatmap", str(tmp_path / "r.npy"), "-s", "0:6", "--ncols", "3"]
    assert cli.main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    assert cli.main([*base, "-o", str(tmp_path / "lab.png"), "--labels", "--colorbar", "--shared-norm"]) == 0
    assert "lab.png" in capsys.readouterr().out
    with Image.open(tmp_path / "plain.png") as im:
        plain = np.asarray(im)
    with Image.open(tmp_path / "lab.png") as im:
        lab = np.asarray(im)
    assert plain.shape == (2 * 60 + 3 * 2, 3 * 60 + 4 * 2, 3)  # 6x6 maps scaled by 10
    st = load_store(tmp_path / "r.npy")
    labels = hm.store_labels(st, range(6))
    assert labels[0].startswith("#0 t=") and " p=" in labels[0]
    R = np.asarray(st["relevance"][:])
    want = hm.heatmap_grid(R, ncols=3, scale=10, shared_norm=True, labels=labels, colorbar=True)
    np.testing.assert_array_equal(lab, want)
    cw = max([60] + [hm.text_size(s)[1] + 6 for s in labels])  # cells widen to labels wider than a panel
    assert lab.shape == (plain.shape[0] + 2 * 11 + (8 + 2 + 1 + 11) + 2, 3 * cw + 4 * 2, 3)
    # a bare relevance array: the sample indices
    np.save(tmp_path / "bare.npy", R)
    assert cli.main(["heatmap", str(tmp_path / "bare.npy"), "-s", "1,4", "-o", str(tmp_path / "b.png"),
                     "--labels"]) == 0
    with Image.open(tmp_path / "b.png") as im:
        np.testing.assert_array_equal(np.asarray(im), hm.heatmap_grid(R[[1, 4]], scale=10, labels=["#1", "#4"]))


def test_reachable_from_the_package():
    import ast
    import pathlib
    import subprocess
    import sys

    code = "import fastlrp; print(fastlrp.heatmap.heatmap_grid.__module__, 'heatmap' in fastlrp.__all__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["fastlrp.heatmap", "True"]
    tree = ast.parse(pathlib.Path(hm.__file__).read_text(encoding="utf-8"))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top <= {"__future__", "math", "os", "re", "typing", "numpy"}  # NumPy alone at import
