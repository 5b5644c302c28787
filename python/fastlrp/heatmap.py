"""Render relevance maps to PNG: single heatmaps and grids, optionally over the input.

Colour maps have zennit's names and look. Each is a list of colour stops on a
0..255 scale, written in the small notation zennit documents for its colour maps:
comma-separated RGB colours in hex (``f00`` or ``ff0000``), each optionally
preceded by its position on the 0..255 scale in hex and a colon (``80:fff``
puts white at 128). Colours without a position are spread evenly between the
ones with a position; the first and last default to positions 0 and 255 (and a
first/last stop at another position is extended to the end with its colour).
Between stops, colours are interpolated linearly.

Values are mapped as zennit does: relevance is normalised to [0, 1] -- with
``symmetric=True`` (the default here) by ``[-max|R|, max|R|]``, so zero is the
middle of the map (white for ``bwr``) -- then quantised to 256 steps and looked
up in the map's 256-entry palette. ``level`` steepens (> 1) or flattens (< 1)
the map around its centre.

Grids can carry a label above each panel (:func:`store_labels` makes "#12 t=3 p=5"
from a relevance store: sample index, explained class, predicted class) and a
colour bar with the value range under them; the text is drawn in a small built-in
5x7 bitmap font (:func:`text_mask`), so no font files or libraries are needed.

NumPy alone is needed; :func:`save_png` uses Pillow when it is installed and a
small built-in PNG writer otherwise.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "COLORMAPS",
    "ColorMap",
    "auto_text_scale",
    "colorbar_strip",
    "draw_text",
    "get_cmap",
    "heatmap",
    "heatmap_grid",
    "image_grid",
    "input_image",
    "label_strip",
    "normalize",
    "palette",
    "reduce_channels",
    "save_heatmap",
    "save_png",
    "store_labels",
    "text_mask",
    "text_size",
]

#: Colour-map definitions (colour stops) under zennit's names.
COLORMAPS = {
    "gray": "000,fff",                             # black to white
    "wred": "fff,f00",                             # white to red
    "wblue": "fff,00f",                            # white to blue
    "hot": "000,f00,ff0,fff",                      # black, red, yellow, white
    "cold": "000,00f,0ff",                         # black, blue, cyan
    "coldnhot": "0ff,00f,80:000,f00,ff0,fff",      # cyan, blue, black at the centre, red, yellow, white
    "bwr": "00f,80:fff,f00",                       # blue, white at the centre, red
    "france": "0055a4,80:fff,ef4135",              # the French flag's blue, white, red
    "seismic": "0000d0,80:d0d0d0,d00000",          # dark blue, light gray at the centre, dark red
    "coolio": "00d0d0,80:d0d0d0,d000d0",           # teal, light gray, magenta
    "coleus": "00d000,80:d0d0d0,d000d0",           # green, light gray, magenta
}

_STOP = re.compile(r"^(?:([0-9a-fA-F]{1,2}):)?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _hex(s: str) -> int:
    v = int(s, 16)
    return v * 17 if len(s) == 1 else v


class ColorMap:
    """A linear colour map from colour stops (see the module docstring for the notation).

    Calling it maps values in [0, 1] (clipped) to RGB floats in [0, 1] with a new
    last axis of size 3; :meth:`palette` gives 256 uint8 RGB entries.
    """

    def __init__(self, spec: str, name: Optional[str] = None):
        self.spec = spec
        self.name = name or spec
        stops = []
        for part in [p.strip() for p in spec.split(",")]:
            m = _STOP.match(part)
            if not m:
                raise ValueError(f"colour map '{self.name}': cannot read the colour stop '{part}' "
                                 "(use e.g. 'f00', 'ff0000' or '80:fff')")
            pos = None if m.group(1) is None else _hex(m.group(1))
            c = m.group(2)
            k = len(c) // 3
            rgb = tuple(_hex(c[i * k:(i + 1) * k]) for i in range(3))
            stops.append([pos, rgb])
        if len(stops) < 2:
            raise ValueError(f"colour map '{self.name}' needs at least two colours")
        if stops[0][0] is None:
            stops[0][0] = 0
        if stops[-1][0] is None:
            stops[-1][0] = 255
        known = [i for i, s in enumerate(stops) if s[0] is not None]
        for a, b in zip(known[:-1], known[1:]):
            pa, pb = stops[a][0], stops[b][0]
            if pb < pa:
                raise ValueError(f"colour map '{self.name}': positions must increase from left to right")
            for j in range(a + 1, b):
                stops[j][0] = pa + (pb - pa) * (j - a) // (b - a)  # whole positions
        if stops[0][0] > 0:
            stops.insert(0, [0, stops[0][1]])
        if stops[-1][0] < 255:
            stops.append([255, stops[-1][1]])
        self.positions = np.array([s[0] for s in stops], dtype=np.float64) / 255.0
        self.colors = np.array([s[1] for s in stops], dtype=np.float64) / 255.0

    def __repr__(self):
        return f"ColorMap({self.name!r})"

    def __call__(self, values) -> np.ndarray:
        v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
        return np.stack([np.interp(v, self.positions, self.colors[:, i]) for i in range(3)], axis=-1)

    def palette(self, level: float = 1.0) -> np.ndarray:
        """256 RGB uint8 entries; ``level`` > 1 saturates earlier, < 1 narrows the colour range."""
        v = (np.arange(256) / 255.0 - 0.5) * float(level) + 0.5
        return np.floor(self(v) * 255.0 + 1e-9).astype(np.uint8)


def get_cmap(cmap) -> ColorMap:
    """A :class:`ColorMap` from a name in :data:`COLORMAPS`, a colour-stop string, or a ColorMap."""
    if isinstance(cmap, ColorMap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"a colour map is a name or a ColorMap, got {type(cmap).__name__}")
    name = cmap.lower()
    name = {"grey": "gray"}.get(name, name)
    if name in COLORMAPS:
        return ColorMap(COLORMAPS[name], name)
    try:
        return ColorMap(cmap)
    except ValueError:
        raise ValueError(f"unknown colour map '{cmap}'; known: {', '.join(COLORMAPS)} "
                         "(or colour stops such as '00f,80:fff,f00')") from None


def palette(cmap="bwr", level: float = 1.0) -> np.ndarray:
    """The 256-entry uint8 RGB palette of a colour map."""
    return get_cmap(cmap).palette(level)


# ------------------------------------------------------------------------------------------
# arrays


def reduce_channels(relevance, channel_axis="auto", how: str = "sum") -> np.ndarray:
    """Relevance of one sample as a 2-D map.

    1-D ``(F,)`` becomes a ``(1, F)`` strip; 2-D is kept; 3-D is reduced over its
    channel axis (``"auto"``: the first axis when it has <= 4 entries and the last
    does not, else the last when it has <= 4 entries, else the first) by ``sum``
    (the default: relevance is additive), ``mean``, or ``absmax`` (signed value of
    largest magnitude).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 1:
        return r[None, :]
    if r.ndim == 2:
        return r
    if r.ndim != 3:
        raise ValueError(f"a heatmap needs one sample's relevance with 1 to 3 axes, got shape {r.shape}")
    if channel_axis == "auto":
        if r.shape[0] <= 4 and r.shape[-1] > 4:
            channel_axis = 0
        elif r.shape[-1] <= 4:
            channel_axis = -1
        else:
            channel_axis = 0
    if how == "sum":
        return r.sum(axis=channel_axis)
    if how == "mean":
        return r.mean(axis=channel_axis)
    if how == "absmax":
        idx = np.expand_dims(np.abs(r).argmax(axis=channel_axis), channel_axis)
        return np.take_along_axis(r, idx, axis=channel_axis).squeeze(channel_axis)
    raise ValueError(f"unknown channel reduction '{how}' (sum, mean, absmax)")


def normalize(a, symmetric: bool = True, vmin=None, vmax=None) -> np.ndarray:
    """Map ``a`` to [0, 1]: symmetric ``[-max|a|, max|a|]`` (0 goes to 0.5) or
    ``[min, max]``; ``vmin``/``vmax`` override the bounds. NaN stays NaN; a
    constant array maps to 0.5 (symmetric) or 0."""
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if symmetric:
        m = float(np.abs(finite).max()) if finite.size else 0.0
        lo = -m if vmin is None else float(vmin)
        hi = m if vmax is None else float(vmax)
    else:
        lo = (float(finite.min()) if finite.size else 0.0) if vmin is None else float(vmin)
        hi = (float(finite.max()) if finite.size else 0.0) if vmax is None else float(vmax)
    if not hi > lo:
        return np.where(np.isfinite(a), 0.5 if symmetric else 0.0, np.nan)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    scale = int(scale)
    if scale <= 1:
        return img
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def input_image(x, channel_axis="auto") -> np.ndarray:
    """An input sample as an RGB float image in [0, 1] (min-max normalised), shape (H, W, 3)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim == 3:
        if channel_axis == "auto":
            channel_axis = 0 if (a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4)) else -1
            if a.shape[channel_axis] not in (1, 3, 4):
                channel_axis = 0
        a = np.moveaxis(a, channel_axis, -1)
        if a.shape[-1] == 4:
            a = a[..., :3]
        if a.shape[-1] != 3:
            a = a.mean(axis=-1)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3:
        raise ValueError(f"cannot show an input of shape {np.shape(x)} as an image")
    return normalize(a, symmetric=False)


# ------------------------------------------------------------------------------------------
# text: a built-in 5x7 bitmap font (drawn for fastlrp), for labels and colour-bar ticks

#: Glyphs of 5 columns: 7 rows from the cap line to the baseline, then (g, j, p, q, y, comma)
#: two rows below the baseline; '#' is ink. Characters not here are drawn as '?'.
_GLYPHS = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": ".###. #...# ....# ..##. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".###. #...# #.... .###. ....# #...# .###.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... ####. #...# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .#### #...# #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... ####. #...# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#",
    "n": "..... ..... ####. #...# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .#### #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "/": "....# ....# ...#. ..#.. .#... #.... #....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
}

_CELL_W, _CELL_H = 5, 9          # glyph cell (with two rows below the baseline)
_ADVANCE, _LINE = _CELL_W + 1, _CELL_H + 1


def _glyph_table() -> dict:
    table = {}
    for ch, rows in _GLYPHS.items():
        g = np.zeros((_CELL_H, _CELL_W), dtype=bool)
        for y, row in enumerate(rows.split()):
            g[y] = [c == "#" for c in row]
        table[ch] = g
    return table


_FONT = _glyph_table()


def text_size(text: str, scale: int = 1) -> tuple:
    """``(height, width)`` in pixels of ``text`` (lines split at ``\\n``) drawn by :func:`draw_text`."""
    lines = str(text).split("\n")
    w = max(len(s) for s in lines) * _ADVANCE - 1 if any(lines) else 0
    return (len(lines) * _LINE - 1) * int(scale), max(w, 0) * int(scale)


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A boolean ink mask of ``text`` in the built-in 5x7 font, each pixel enlarged ``scale`` times.

    Glyphs are 5 pixels wide with one pixel between characters; a line is 9 pixels
    high (7 above the baseline, 2 below) with one pixel between lines.
    """
    lines = str(text).split("\n")
    h, w = text_size(text, 1)
    mask = np.zeros((h, w), dtype=bool)
    for i, line in enumerate(lines):
        for j, ch in enumerate(line):
            y, x = i * _LINE, j * _ADVANCE
            mask[y:y + _CELL_H, x:x + _CELL_W] = _FONT.get(ch, _FONT["?"])
    return _upscale(mask, scale)


def draw_text(img: np.ndarray, text: str, x: int, y: int, color=(0, 0, 0), scale: int = 1) -> np.ndarray:
    """Draw ``text`` into the RGB uint8 array ``img`` (in place) with its top-left corner at
    ``(x, y)``; what falls outside the image is clipped. Returns ``img``."""
    m = text_mask(text, scale)
    H, W = img.shape[:2]
    y0, x0 = max(0, -y), max(0, -x)
    y1, x1 = min(m.shape[0], H - y), min(m.shape[1], W - x)
    if y1 > y0 and x1 > x0:
        region = img[y + y0:y + y1, x + x0:x + x1]
        region[m[y0:y1, x0:x1]] = np.asarray(color, dtype=np.uint8)
    return img


def heatmap(relevance, cmap="bwr", symmetric: bool = True, level: float = 1.0, vmin=None, vmax=None,
            image=None, alpha: float = 0.7, scale: int = 1, channel_axis="auto", reduce: str = "sum",
            nan_color=(128, 128, 128)) -> np.ndarray:
    """Render one sample's relevance as an RGB uint8 array ``(H * scale, W * scale, 3)``.

    Parameters
    ----------
    relevance : array
        ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` (channels are summed, see
        :func:`reduce_channels`) or ``(F,)`` (a strip).
    cmap : str or ColorMap
        ``bwr`` (default), ``coldnhot``, ``seismic``, ``gray``, ``hot``, ``cold``,
        ``wred``, ``wblue``, ``france``, ``coolio``, ``coleus`` or colour stops.
    symmetric, vmin, vmax : normalisation (see :func:`normalize`).
    level : float
        zennit's colour-map level.
    image : array, optional
        The input sample; the heatmap is laid over it, more opaque where the
        relevance is larger in magnitude (weight ``alpha * |relevance| / max``).
    scale : int
        Nearest-neighbour enlargement (small images such as 8x8 digits).
    nan_color : RGB
        Colour of NaN relevance (skipped samples).
    """
    r = reduce_channels(relevance, channel_axis, reduce)
    u = normalize(r, symmetric=symmetric, vmin=vmin, vmax=vmax)
    nan = ~np.isfinite(u)
    q = np.clip(np.nan_to_num(u, nan=0.5) * 255.0, 0, 255).astype(np.uint8)
    pal = get_cmap(cmap).palette(level)
    rgb = pal[q].astype(np.float64)
    if image is not None:
        base = input_image(image, channel_axis) * 255.0
        if base.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"the input image {base.shape[:2]} and the relevance {rgb.shape[:2]} differ in size")
        w = np.abs(np.nan_to_num(u, nan=0.5) - 0.5) * 2.0 if symmetric else np.nan_to_num(u)
        w = (float(alpha) * w)[..., None]
        rgb = base * (1.0 - w) + rgb * w
    rgb[nan] = nan_color
    return _upscale(np.clip(np.round(rgb), 0, 255).astype(np.uint8), scale)


def auto_text_scale(width: int) -> int:
    """The font enlargement used for a tile ``width`` pixels wide: one step per 100
    pixels, 1 to 3."""
    return max(1, min(3, int(width) // 100))


def label_strip(text: str, width: int, lines: Optional[int] = None, scale: int = 1,
                fill=(255, 255, 255), color=(0, 0, 0)) -> np.ndarray:
    """``text`` (lines split at ``\\n``) centred in a strip ``width`` pixels wide and ``lines``
    lines high (default: as many as the text has) with one font pixel above:
    height ``(lines * 10 + 1) * scale``. Text wider than the strip is clipped."""
    rows = str(text).split("\n")
    n = len(rows) if lines is None else int(lines)
    out = np.empty(((n * _LINE + 1) * scale, int(width), 3), dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8)
    for i, row in enumerate(rows[:n]):
        w = text_size(row, scale)[1]
        draw_text(out, row, (out.shape[1] - w) // 2, (1 + i * _LINE) * scale, color, scale)
    return out


def image_grid(tiles: Sequence[np.ndarray], ncols: Optional[int] = None, pad: int = 2,
               fill=(255, 255, 255), labels: Optional[Sequence[str]] = None,
               text_scale: Optional[int] = None) -> np.ndarray:
    """Arrange RGB uint8 tiles of one size into a grid (row-major), ``pad`` pixels apart.

    ``labels`` (one string per tile, ``None`` or ``""`` for none; ``\\n`` starts a new
    line) are written above their tiles in the built-in font (:func:`label_strip`):
    every cell gets a strip as high as the label with the most lines needs, and cells
    are widened to the widest label plus one space where that is wider than a tile
    (the tile is then centred). ``text_scale`` enlarges the font (default :func:`auto_text_scale` of the
    tile width).
    """
    tiles = [np.asarray(t) for t in tiles]
    if not tiles:
        raise ValueError("no images to put in a grid")
    tiles = [t if t.ndim == 3 else np.repeat(t[..., None], 3, axis=-1) for t in tiles]
    for t in tiles:
        if t.shape != tiles[0].shape:
            raise ValueError(f"grid tiles must share one shape, got {t.shape} and {tiles[0].shape}")
    if labels is not None:
        labels = ["" if s is None else str(s) for s in labels]
        if len(labels) != len(tiles):
            raise ValueError(f"{len(labels)} labels for {len(tiles)} grid tiles")
        h, w = tiles[0].shape[:2]
        k = int(text_scale) if text_scale else auto_text_scale(w)
        n = max(s.count("\n") + 1 for s in labels)
        cw = max([w] + [text_size(s, k)[1] + _ADVANCE * k for s in labels])  # a space between labels
        x = (cw - w) // 2

        def cell(text, tile):
            out = label_strip(text, cw, n, k, fill)
            body = np.empty((h, cw, 3), dtype=np.uint8)
            body[...] = np.asarray(fill, dtype=np.uint8)
            body[:, x:x + w] = tile
            return np.concatenate([out, body])

        tiles = [cell(s, t) for s, t in zip(labels, tiles)]
    h, w = tiles[0].shape[:2]
    n = len(tiles)
    if ncols is None:
        ncols = int(math.ceil(math.sqrt(n)))
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    out = np.empty((nrows * h + (nrows + 1) * pad, ncols * w + (ncols + 1) * pad, 3), dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = t
    return out


def _tick(v: float) -> str:
    return "0" if v == 0 else f"{v:+.3g}"


def colorbar_strip(width: int, cmap="bwr", level: float = 1.0, vmin=None, vmax=None, symmetric: bool = True,
                   scale: int = 1, margin: int = 2, fill=(255, 255, 255)) -> np.ndarray:
    """A colour bar: the palette as a left-to-right gradient in a gray frame, ``8 * scale``
    pixels high inside, with the value range written under its ends and centre.

    With ``vmin`` and ``vmax`` the ticks are those values and their middle (e.g.
    ``-0.12  0  +0.12``); without, each panel was normalised on its own and the ticks
    read ``-max  0  +max`` (``min  max`` when not ``symmetric``) over the caption
    "each panel scaled to its own max |R|" ("min..max"). The strip is at least as wide
    as its text needs (``margin`` pixels each side). Height ``8 * scale + 2 + 1 + (10 *
    lines + 1) * scale`` where lines is 1 (values) or 2 (with the caption).
    """
    k = int(scale)
    if vmin is not None and vmax is not None:
        lo, hi = float(vmin), float(vmax)
        ticks, caption = (_tick(lo), _tick((lo + hi) / 2), _tick(hi)), None
    elif symmetric:
        ticks, caption = ("-max", "0", "+max"), "each panel scaled to its own max |R|"
    else:
        ticks, caption = ("min", "", "max"), "each panel scaled to its own min..max"
    gap = 2 * _ADVANCE * k
    need = max(sum(text_size(t, k)[1] for t in ticks) + 2 * gap,
               text_size(caption, k)[1] if caption else 0) + 2 * margin
    width = max(int(width), need)
    bar_w, bar_h = width - 2 * margin, 8 * k + 2
    text_h = ((2 if caption else 1) * _LINE + 1) * k
    out = np.empty((bar_h + 1 + text_h, width, 3), dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8)
    pal = get_cmap(cmap).palette(level)
    inner = bar_w - 2
    idx = np.round(np.arange(inner) * (255.0 / max(inner - 1, 1))).astype(np.int64)
    out[0:bar_h, margin:margin + bar_w] = 128  # the frame
    out[1:bar_h - 1, margin + 1:margin + 1 + inner] = pal[idx][None]
    y = bar_h + 1 + k
    left, mid, right = ticks
    draw_text(out, left, margin, y, scale=k)
    draw_text(out, mid, margin + (bar_w - text_size(mid, k)[1]) // 2, y, scale=k)
    draw_text(out, right, margin + bar_w - text_size(right, k)[1], y, scale=k)
    if caption:
        draw_text(out, caption, (width - text_size(caption, k)[1]) // 2, y + _LINE * k, scale=k)
    return out


def heatmap_grid(relevances, images=None, ncols: Optional[int] = None, pad: int = 2, shared_norm: bool = False,
                 side_by_side: bool = False, labels: Optional[Sequence[str]] = None, colorbar: bool = False,
                 text_scale: Optional[int] = None, **kw) -> np.ndarray:
    """Heatmaps of several samples ``(N, ...)`` in a grid (RGB uint8 array).

    Each heatmap is normalised on its own (as zennit's grids), or all with one
    bound (``shared_norm=True``: ``[-max|R|, max|R|]`` over all samples, or their
    ``[min, max]`` when not symmetric). ``images`` (the inputs, ``(N, ...)``) are laid
    under the heatmaps, or shown next to each (``side_by_side=True``).

    ``labels``: one text per sample written above its panel (e.g. from
    :func:`store_labels`; see :func:`image_grid`). ``colorbar=True`` adds a colour bar
    under the grid with the value range (:func:`colorbar_strip`); the image then grows by
    the bar's height, and in width only where the grid is narrower than the bar's
    text. ``text_scale`` enlarges the font of both (default by the panel width,
    :func:`auto_text_scale`). Other keywords go to :func:`heatmap`.
    """
    R = [np.asarray(r) for r in relevances]
    symmetric = kw.get("symmetric", True)
    if shared_norm and "vmin" not in kw and "vmax" not in kw:
        maps = [reduce_channels(r, kw.get("channel_axis", "auto"), kw.get("reduce", "sum")) for r in R]
        finite = np.concatenate([m[np.isfinite(m)].ravel() for m in maps]) if maps else np.zeros(0)
        if finite.size and symmetric:
            m = float(np.abs(finite).max())
            kw["vmin"], kw["vmax"] = -m, m
        elif finite.size:
            kw["vmin"], kw["vmax"] = float(finite.min()), float(finite.max())
    scale = kw.get("scale", 1)
    tiles = []
    for i, r in enumerate(R):
        img = None if images is None else np.asarray(images[i])
        if side_by_side and img is not None:
            hm = heatmap(r, **kw)
            base = _upscale(np.round(input_image(img, kw.get("channel_axis", "auto")) * 255).astype(np.uint8), scale)
            gap = np.full((hm.shape[0], max(1, pad), 3), 255, dtype=np.uint8)
            tiles.append(np.concatenate([base, gap, hm], axis=1))
        else:
            tiles.append(heatmap(r, image=img, **kw))
    grid = image_grid(tiles, ncols=ncols, pad=pad, labels=labels, text_scale=text_scale)
    if not colorbar:
        return grid
    k = int(text_scale) if text_scale else auto_text_scale(tiles[0].shape[1])
    bar = colorbar_strip(grid.shape[1], kw.get("cmap", "bwr"), kw.get("level", 1.0), kw.get("vmin"), kw.get("vmax"),
                         symmetric, k, margin=max(pad, 2))
    out = np.full((grid.shape[0] + bar.shape[0] + pad, max(grid.shape[1], bar.shape[1]), 3), 255, dtype=np.uint8)
    out[:grid.shape[0], :grid.shape[1]] = grid
    out[grid.shape[0]:grid.shape[0] + bar.shape[0], :bar.shape[1]] = bar
    return out


def store_labels(store, indices=None, target_index: int = 0) -> list:
    """Panel labels from a relevance store (the dict of :func:`fastlrp.dataset.load_store`,
    or any mapping with its ``target`` and ``output`` arrays, optionally ``valid``
    and ``meta``): ``"#12 t=3 p=5"`` for sample 12 explained for class 3 and
    predicted as class 5 (the arg-max of its output). ``t=`` is left out where no
    class was explained (a seed relevance, target -1) and ``p=`` where the output is
    not finite; samples marked not valid read ``"#12 skipped"``. ``target_index``
    picks the target of a multi-target store.
    """
    target, output = store["target"], store["output"]
    valid = store.get("valid")
    multi = bool((store.get("meta") or {}).get("multi_target")) or len(target.shape) > 1
    if indices is None:
        indices = range(target.shape[0])
    out = []
    for i in indices:
        i = int(i)
        if valid is not None and not int(np.asarray(valid[i])):
            out.append(f"#{i} skipped")
            continue
        t = np.asarray(target[i])
        t = int(t.reshape(-1)[target_index]) if multi else int(t)
        o = np.asarray(output[i], dtype=np.float64).reshape(-1)
        parts = [f"#{i}"]
        if t >= 0:
            parts.append(f"t={t}")
        if o.size and np.isfinite(o).all():
            parts.append(f"p={int(o.argmax())}")
        out.append(" ".join(parts))
    return out


def save_png(rgb: np.ndarray, path) -> str:
    """Write an RGB uint8 array ``(H, W, 3)`` as a PNG (with Pillow when installed,
    else with a small writer using only the standard library)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"save_png needs an (H, W, 3) uint8 array, got {arr.shape}")
    path = os.fspath(path)
    try:
        from PIL import Image
    except ImportError:
        _write_png(arr, path)
        return path
    Image.fromarray(arr).save(path, format="PNG", optimize=True)
    return path


def _write_png(arr: np.ndarray, path: str) -> None:
    """A minimal PNG encoder: 8-bit RGB, no filtering, zlib-compressed (PNG spec, ISO/IEC 15948)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), arr.reshape(h, w * 3)], axis=1).tobytes()  # filter 0 per row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def save_heatmap(relevance, path, grid: bool = False, **kw) -> str:
    """Render and write a PNG: one sample's relevance, or ``grid=True`` for ``(N, ...)``
    (keywords as :func:`heatmap` / :func:`heatmap_grid`)."""
    arr = heatmap_grid(relevance, **kw) if grid else heatmap(relevance, **kw)
    return save_png(arr, path)
