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
    "get_cmap",
    "heatmap",
    "heatmap_grid",
    "image_grid",
    "input_image",
    "normalize",
    "palette",
    "reduce_channels",
    "save_heatmap",
    "save_png",
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


def image_grid(tiles: Sequence[np.ndarray], ncols: Optional[int] = None, pad: int = 2,
               fill=(255, 255, 255)) -> np.ndarray:
    """Arrange RGB uint8 tiles of one size into a grid (row-major), ``pad`` pixels apart."""
    tiles = [np.asarray(t) for t in tiles]
    if not tiles:
        raise ValueError("no images to put in a grid")
    h, w = tiles[0].shape[:2]
    for t in tiles:
        if t.shape != tiles[0].shape:
            raise ValueError(f"grid tiles must share one shape, got {t.shape} and {tiles[0].shape}")
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
        out[y:y + h, x:x + w] = t if t.ndim == 3 else t[..., None]
    return out


def heatmap_grid(relevances, images=None, ncols: Optional[int] = None, pad: int = 2, shared_norm: bool = False,
                 side_by_side: bool = False, **kw) -> np.ndarray:
    """Heatmaps of several samples ``(N, ...)`` in a grid (RGB uint8 array).

    Each heatmap is normalised on its own (as zennit's grids), or all with one
    bound (``shared_norm=True``). ``images`` (the inputs, ``(N, ...)``) are laid
    under the heatmaps, or shown next to each (``side_by_side=True``). Other
    keywords go to :func:`heatmap`.
    """
    R = [np.asarray(r) for r in relevances]
    if shared_norm and "vmin" not in kw and "vmax" not in kw:
        m = max((float(np.nanmax(np.abs(reduce_channels(r, kw.get("channel_axis", "auto"))))) for r in R),
                default=0.0)
        if kw.get("symmetric", True):
            kw["vmin"], kw["vmax"] = -m, m
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
    return image_grid(tiles, ncols=ncols, pad=pad)


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
