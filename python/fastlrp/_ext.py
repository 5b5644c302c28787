"""Loads the compiled extensions, never raising.

``core`` is :mod:`fastlrp._core` (CPU kernels) or ``None``; ``core_error`` then
says why it could not be loaded. ``cuda`` / ``cuda_error`` likewise for
:mod:`fastlrp._cuda`, which is optional at build time and imports fine on a
machine without a GPU (use :func:`cuda_available` to know whether it can run).

:func:`cuda_emu` loads :mod:`fastlrp._cuda_emu`, the GPU kernels built for the
host under a SIMT emulator: test scaffolding, built only with ``FASTLRP_CUDA_EMU=ON``
and loaded only when asked for (the ``cuda-emu`` backend, the tests, ``fastlrp info``).
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from types import ModuleType
from typing import Optional

__all__ = [
    "CUDA_EMU_BUILD_HINT",
    "core",
    "core_error",
    "cuda",
    "cuda_available",
    "cuda_emu",
    "cuda_error",
    "cuda_unavailable_reason",
]

_log = logging.getLogger("fastlrp")


def _load(name: str, missing_hint: str) -> tuple[Optional[ModuleType], str]:
    try:
        return importlib.import_module(f"fastlrp.{name}"), ""
    except ModuleNotFoundError as e:
        # Only "this module is absent" counts as not built; a missing dependency
        # of the module (e.g. a shared library) is reported as it is.
        why = missing_hint if e.name == f"fastlrp.{name}" else f"{type(e).__name__}: {e}"
    except Exception as e:  # ImportError from a bad .so, ABI mismatch, ...
        why = f"{type(e).__name__}: {e}"
    _log.debug("fastlrp.%s not loaded: %s", name, why)
    return None, why


core, core_error = _load(
    "_core", "fastlrp._core is not built (install from a wheel or build with `pip install .`)"
)
cuda, cuda_error = _load(
    "_cuda", "fastlrp._cuda is not built (needs nvcc at build time; FASTLRP_CUDA=ON forces it)"
)


def cuda_available() -> bool:
    """True when ``_cuda`` is built and a CUDA device is usable."""
    if cuda is None:
        return False
    try:
        return bool(cuda.available())
    except Exception:  # a broken driver must not take the caller down
        return False


def cuda_unavailable_reason() -> str:
    """Why the CUDA backend cannot run ('' when it can)."""
    if cuda is None:
        return cuda_error
    try:
        return "" if cuda.available() else (cuda.why_unavailable() or "no CUDA device")
    except Exception as e:
        return f"{type(e).__name__}: {e}"


CUDA_EMU_BUILD_HINT = (
    "fastlrp._cuda_emu is not built (test scaffolding, the CUDA kernels on a CPU SIMT emulator: "
    "build it with FASTLRP_CUDA_EMU=ON pip install .)"
)


@lru_cache(maxsize=None)
def cuda_emu() -> tuple[Optional[ModuleType], str]:
    """``(fastlrp._cuda_emu, "")``, or ``(None, why)`` when it is not built or fails to load."""
    return _load("_cuda_emu", CUDA_EMU_BUILD_HINT)
