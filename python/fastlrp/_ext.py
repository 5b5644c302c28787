"""Loads the compiled extensions, never raising.

``core`` is :mod:`fastlrp._core` (CPU kernels) or ``None``; ``core_error`` then
says why it could not be loaded. ``cuda`` / ``cuda_error`` likewise for
:mod:`fastlrp._cuda`, which is optional at build time and imports fine on a
machine without a GPU (use :func:`cuda_available` to know whether it can run).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Optional

__all__ = ["core", "core_error", "cuda", "cuda_error", "cuda_available", "cuda_unavailable_reason"]

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
