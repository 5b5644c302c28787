"""The bad-input probe (tests/probe_bad_inputs.py) in the suite: nothing crashes,
nothing is silently wrong, every refusal is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("zarr")

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_bad_inputs.py")


def test_probe_finds_nothing_crashed_unclear_or_silently_wrong(tmp_path):
    p = subprocess.run([sys.executable, PROBE, "--json", str(tmp_path / "probe.json")], capture_output=True,
                       text=True, timeout=900)
    summary = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:]
    bad = [line for line in p.stdout.splitlines() if line.startswith(("unclear", "silently wrong", "crashed"))]
    assert p.returncode == 0, summary + "\n" + "\n".join(bad) + p.stderr[-2000:]
    assert summary.startswith("tried ") and " 0 crashed" in summary and " 0 silently wrong" in summary
    import json

    counts = json.loads((tmp_path / "probe.json").read_text())["counts"]
    assert counts["handled"] >= 100  # every category ran
