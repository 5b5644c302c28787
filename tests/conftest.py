"""Shared test helpers.

``import_zennit()`` imports zennit 1.x where torchvision (and Pillow) are not
installed, through ``tests/_zennit_compat.py`` (minimal stand-ins for the few
names zennit touches at import). Only the zennit-dependent tests call it, so no
other test sees the stand-ins.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest

# Hypothesis imports this module lazily to report a failure; under pytest's
# ``filterwarnings = error`` that import dies on a DeprecationWarning from libcst's
# dependencies (an INTERNALERROR that hides the failure). Import it now, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # noqa: BLE001 - optional, only improves failure reports
        pass


def import_zennit():
    """Import zennit (skipping the test when torch or zennit is missing), stubbing torchvision/PIL if absent."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed")
    from _zennit_compat import import_zennit as _import

    return _import()


@pytest.fixture(scope="session")
def keras():
    """Keras on its torch backend (the test modules set KERAS_BACKEND=torch before any
    import of keras); skips when keras is missing or was imported with another backend."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"these tests run Keras on the torch backend, found {keras.backend.backend()}")
    return keras
