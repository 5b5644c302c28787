"""Smoke test of the GPU benchmark harness (bench/bench_gpu.py) without a GPU.

Runs its ``--device cpu --backend cuda-emu`` mode (the GPU kernels under the host
SIMT emulator, torch and zennit on the CPU) on the tiny residual net, batches 1
and 2, one repeat, in a subprocess, and checks the JSON it writes: every
composite and batch has a row, the correctness check ran and passed, the
timing and memory columns are filled in.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastlrp._cuda_emu")
if importlib.util.find_spec("zennit") is None:
    pytest.skip("zennit is not installed", allow_module_level=True)
from _zennit_compat import import_zennit  # noqa: E402

import_zennit()  # as the bench does: with torchvision/Pillow stand-ins where they are missing

import fastlrp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_gpu.py"
COMPOSITES = ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box"]
BATCHES = [1, 2]

ROW_KEYS = {
    "model", "composite", "batch", "gpu", "fastlrp_status", "zennit_status", "err_vs_zennit",
    "fastlrp_seconds", "zennit_seconds", "fastlrp_samples_per_s", "zennit_samples_per_s", "ratio_zennit",
    "torch_forward_samples_per_s", "limit_seconds", "ratio_limit", "ratio_limit_same_batch",
    "fastlrp_peak_mib", "zennit_peak_mib", "targets",
}


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "r.json"
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlrp.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--backend", "cuda-emu", "--models", "tiny_resnet",
           "--batches", *map(str, BATCHES), "--repeats", "1", "--warmup", "1", "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"bench_gpu.py failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return json.loads(out.read_text()), p.stdout


def test_correctness_checked_and_passed(bench_run):
    doc, stdout = bench_run
    checks = {(c["model"], c["composite"]): c for c in doc["correctness"]}
    assert set(checks) == {("tiny_resnet", c) for c in COMPOSITES}
    for c in checks.values():
        assert c["passed"] is True, c
        assert c["err_vs_zennit"] is not None and c["err_vs_zennit"] <= c["tol"], c
        # the emulator mode also checks both sides against the float64 reference
        assert c["fastlrp_err_vs_reference"] <= c["tol"], c
        assert c["zennit_err_vs_reference"] <= c["tol"], c
    assert "max rel error fastlrp vs zennit" in stdout
    assert "NOT TIMED" not in stdout


def test_rows(bench_run):
    doc, stdout = bench_run
    rows = doc["rows"]
    assert sorted((r["composite"], r["batch"]) for r in rows) == sorted((c, b) for c in COMPOSITES for b in BATCHES)
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["model"] == "tiny_resnet"
        assert r["fastlrp_status"] == "ok" and r["zennit_status"] == "ok", r
        for k in ("fastlrp_samples_per_s", "zennit_samples_per_s", "ratio_zennit", "torch_forward_samples_per_s",
                  "ratio_limit", "ratio_limit_same_batch", "fastlrp_peak_mib"):
            assert _positive(r[k]), (k, r[k])
        assert r["fastlrp_samples_per_s"] == pytest.approx(r["batch"] / r["fastlrp_seconds"])
        assert r["ratio_zennit"] == pytest.approx(r["zennit_seconds"] / r["fastlrp_seconds"])
        # the targets: the speed targets apply at batches 1 and 64 only
        assert ("x_zennit_b1>=10" in r["targets"]) == (r["batch"] == 1)
        assert "x_zennit_b64>=2" not in r["targets"]
        assert "x_limit<=1.5" in r["targets"] and "mem<=zennit/2" in r["targets"]
    # one text row per JSON row, under a header
    assert stdout.count("tiny_resnet ") >= len(rows)
    assert "x zennit" in stdout and "x limit" in stdout


def test_header_and_model_info(bench_run):
    doc, stdout = bench_run
    assert doc["machine"]["backend"] == "cuda-emu" and doc["machine"]["device"] == "cpu"
    assert stdout.startswith("# GPU: ")
    assert doc["settings"]["tf32"] == {"cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    m = doc["models"]["tiny_resnet"]
    assert _positive(m["forward_gflop_per_sample"]) and _positive(m["best_forward_gflops"])
    assert set(m["limit_gflop_per_sample"]) == set(COMPOSITES)
    for c in COMPOSITES:  # LRP needs at least a forward and a backward pass
        assert m["limit_gflop_per_sample"][c] >= 2 * m["forward_gflop_per_sample"]
