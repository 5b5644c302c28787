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
    "plain_cuda_reason",
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
    """Why the CUDA backend cannot run ('' when it can), in plain words."""
    if cuda is None:
        return cuda_error
    try:
        if cuda.available():
            return ""
        return plain_cuda_reason(cuda.why_unavailable() or "no CUDA device", cuda.driver_version(),
                                 cuda.runtime_version())
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def plain_cuda_reason(raw: str, driver: int, runtime: int) -> str:
    """CUDA's reason for having no device, said plainly: CUDA reports a machine
    without any NVIDIA driver as "CUDA driver version is insufficient for CUDA
    runtime version" (driver version 0), which reads like an update is needed."""
    use_cpu = "the cuda backend cannot run here (use backend='cpu')"
    if not driver:
        return f"this machine has no NVIDIA GPU driver, so no GPU: {use_cpu}; CUDA says: {raw}"
    if runtime and driver < runtime:
        return (f"the NVIDIA driver supports CUDA up to {_cuda_version(driver)}, older than the CUDA "
                f"{_cuda_version(runtime)} fastlrp was built with: update the driver, or use backend='cpu'; "
                f"CUDA says: {raw}")
    if "no CUDA-capable device" in raw or "no CUDA device" in raw:
        import os

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r} hides the others)" if visible is not None else ""
        return f"the NVIDIA driver finds no GPU{hidden}: {use_cpu}; CUDA says: {raw}"
    return raw


CUDA_EMU_BUILD_HINT = (
    "fastlrp._cuda_emu is not built (test scaffolding, the CUDA kernels on a CPU SIMT emulator: "
    "build it with FASTLRP_CUDA_EMU=ON pip install .)"
)


@lru_cache(maxsize=None)
def cuda_emu() -> tuple[Optional[ModuleType], str]:
    """``(fastlrp._cuda_emu, "")``, or ``(None, why)`` when it is not built or fails to load."""
    return _load("_cuda_emu", CUDA_EMU_BUILD_HINT)
