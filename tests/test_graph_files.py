"""Every damaged or malformed graph file gets a GraphFileError that names the file and
the problem (never a JSONDecodeError, KeyError, ZeroDivisionError or numpy's advice to
enable pickle); non-finite parameters are named at Explainer creation."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

import fastlrp
from fastlrp import GraphBuilder, GraphError, GraphFileError


def _graph():
    rng = np.random.default_rng(0)
    b = GraphBuilder((2, 6, 6))
    h = b.conv(b.input, rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), padding=1, name="conv")
    h = b.activation(h, "relu")
    h = b.flatten(h)
    b.dense(h, rng.normal(size=(4, 108)), rng.normal(size=4), name="fc")
    return b.build()


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "g.npz"
    _graph().save(path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rewrite(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def edit_header(path, edit):
    """Rewrite the JSON header of a saved graph through ``edit(header) -> header or raw str``."""
    members = _members(path)
    with np.load(path) as z:
        header = json.loads(bytes(z["__graph__"]).decode())
    new = edit(header)
    raw = new if isinstance(new, (str, bytes)) else json.dumps(new)
    raw = raw.encode() if isinstance(raw, str) else raw
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(raw, dtype=np.uint8))
    members["__graph__.npy"] = buf.getvalue()
    _rewrite(path, members)


def _set(key, value):
    def edit(h):
        h[key] = value
        return h
    return edit


def _del(key):
    def edit(h):
        del h[key]
        return h
    return edit


def _node_attr(node, key, value):
    def edit(h):
        for d in h["nodes"]:
            if d["name"] == node:
                d["attrs"][key] = value
        return h
    return edit


HEADER_CASES = {
    "bad json": (lambda h: "{not json", "not valid JSON"),
    "not utf-8": (lambda h: b"\xff\xfe\x00", "not valid JSON"),
    "json list": (lambda h: "[1, 2]", "format 'fastlrp.graph'"),
    "wrong format": (_set("format", "other"), "format 'fastlrp.graph'"),
    "version string": (_set("version", "1"), "version must be a positive integer"),
    "future version": (_set("version", 99), "newer than this fastlrp reads"),
    "no nodes": (_del("nodes"), "no list of nodes"),
    "no output": (_del("output"), "does not name its output"),
    "output unknown": (_set("output", "nowhere"), "'nowhere' is not in the graph"),
    "nodes not list": (_set("nodes", {"a": 1}), "no list of nodes"),
    "stride 0": (_node_attr("conv", "stride", {"__tuple__": [0, 1]}), "stride (0, 1) must be >= 1"),
    "negative padding": (_node_attr("conv", "padding", {"__tuple__": [{"__tuple__": [-1, -1]}, {"__tuple__": [1, 1]}]}),
                         "must be >= 0"),
    "stride float": (_node_attr("conv", "stride", {"__tuple__": [1.5, 1]}), "stride must be 2 integers"),
    "unknown op": (lambda h: {**h, "nodes": [h["nodes"][0], {**h["nodes"][1], "op": "warp"}, *h["nodes"][2:]]},
                   "unknown op 'warp'"),
    "node field type": (lambda h: {**h, "nodes": [h["nodes"][0], {**h["nodes"][1], "inputs": "input"}, *h["nodes"][2:]]},
                        "field 'inputs' must be a list"),
    "node not mapping": (lambda h: {**h, "nodes": [h["nodes"][0], 7, *h["nodes"][2:]]}, "is not a mapping"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_header_is_a_graph_file_error(saved, case):
    edit, expected = HEADER_CASES[case]
    edit_header(saved, edit)
    with pytest.raises(GraphFileError) as e:
        fastlrp.Graph.load(saved)
    msg = str(e.value)
    assert str(saved) in msg and expected in msg, msg
    assert "pickle" not in msg


def test_missing_parameter_array(saved):
    members = _members(saved)
    dropped = next(n for n in members if n.startswith("p"))
    del members[dropped]
    _rewrite(saved, members)
    with pytest.raises(GraphFileError, match=r"parameter '\w+' \(array 'p\d+_\w+'\) is missing"):
        fastlrp.Graph.load(saved)


@pytest.mark.parametrize("content", [b"", b"x", b"\x93NUMPY garbage", b"PK\x03\x04 truncated", b"\x80\x04K\x01."])
def test_not_a_graph_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(GraphFileError) as e:
        fastlrp.Graph.load(path)
    assert str(path) in str(e.value) and "not a fastlrp graph file" in str(e.value)
    assert "pickle" not in str(e.value)


def test_plain_npz_without_header(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(GraphFileError, match="no '__graph__' entry"):
        fastlrp.Graph.load(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GraphFileError) as e:
        fastlrp.Graph.load(saved)
    assert str(saved) in str(e.value)


def test_flipped_bytes_in_a_parameter(saved):
    """A damaged member is a CRC failure on read: a GraphFileError, never wrong weights."""
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = next(i for i in z.infolist() if i.filename.startswith("p"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size - 3] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(GraphFileError, match="damaged or truncated"):
        fastlrp.Graph.load(saved)


def test_missing_and_directory(tmp_path):
    with pytest.raises(GraphFileError, match="cannot read the graph file"):
        fastlrp.Graph.load(tmp_path / "nope.npz")
    with pytest.raises(GraphFileError, match="cannot read the graph file: Is a directory"):
        fastlrp.Graph.load(tmp_path)


def test_round_trip_still_exact(saved):
    g, h = _graph(), fastlrp.Graph.load(saved)
    assert g.fingerprint() == h.fingerprint()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_parameter_is_named_at_explainer_creation(bad):
    g = _graph()
    g["fc"].params["bias"][2] = bad
    with pytest.raises(GraphError, match=r"node 'fc' \(dense\): parameter 'bias' has 1 NaN/Inf value\(s\) of 4"):
        fastlrp.Explainer(g, "epsilon_plus", backend="reference")


def test_window_attributes_checked_when_building():
    b = GraphBuilder((1, 5, 5))
    with pytest.raises(GraphError, match=r"node 'p' \(maxpool\): stride \(0, 0\) must be >= 1"):
        b.maxpool(b.input, 2, stride=0, name="p")
        b.build()
    b = GraphBuilder((1, 5, 5))
    with pytest.raises(GraphError, match=r"dilation \(0, 0\) must be >= 1"):
        b.conv(b.input, np.ones((1, 1, 3, 3)), dilation=0, name="c")
        b.build()
