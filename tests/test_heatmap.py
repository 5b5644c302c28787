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
