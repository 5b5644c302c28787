"""fastlrp.memory: the Explainer makes glibc keep freed large blocks for the next call
(no page faults and zeroing of tens of MB per layer and call), unless told not to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import fastlrp.memory as memory

_glibc = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())
needs_glibc = pytest.mark.skipif(not _glibc, reason="only glibc's allocator has these settings")

# 256 MB touched and freed: is it still resident (kept in the heap) or returned to the OS?
_PROBE = textwrap.dedent("""
    import numpy as np, fastlrp, fastlrp.memory as memory
    from fastlrp import GraphBuilder
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    b = GraphBuilder((3,))
    b.dense(b.input, np.ones((2, 3)))
    fastlrp.Explainer(b.build(), "epsilon_plus")  # (the Explainer applies the settings)
    base = rss()
    a = np.ones(64 << 20, np.float32)
    del a
    print(memory.keep_freed_blocks(), rss() - base > (200 << 20))
""")


def _probe(env_value):
    import os

    env = dict(os.environ)
    env.pop("FASTLRP_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["FASTLRP_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@needs_glibc
def test_freed_blocks_stay_in_the_heap():
    assert _probe(None) == ["True", "True"]


@needs_glibc
def test_the_environment_variable_leaves_the_allocator_alone():
    assert _probe("0") == ["False", "False"]


def test_keep_freed_blocks_is_idempotent():
    first = memory.keep_freed_blocks()
    assert memory.keep_freed_blocks() is first
