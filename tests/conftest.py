"""Shared test helpers.

``import_zennit()`` imports zennit 1.x where torchvision (and Pillow) are not
installed: zennit only needs them at import time for
- ``zennit.types``: ``torchvision.ops.FrozenBatchNorm2d`` (a class in an
  ``isinstance`` tuple for ``BatchNorm``);
- ``zennit.torchvision``: ``torchvision.models.resnet.Bottleneck`` and
  ``BasicBlock`` (classes matched by the ResNet canonizers);
- ``zennit.image``: ``from PIL import Image`` (only used when making images).
Minimal stand-in modules providing exactly these names are put in
``sys.modules`` when the real packages are missing. Only the zennit parity
tests call this, so no other test sees the stand-ins.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def _install_torchvision_stub(torch):
    tv = types.ModuleType("torchvision")
    tv.__path__ = []  # a package, so submodule imports resolve through sys.modules
    tv.__fastlrp_stub__ = True
    ops = types.ModuleType("torchvision.ops")
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    resnet = types.ModuleType("torchvision.models.resnet")

    class FrozenBatchNorm2d(torch.nn.Module):  # never instantiated: only an isinstance target
        pass

    class BasicBlock(torch.nn.Module):
        pass

    class Bottleneck(torch.nn.Module):
        pass

    ops.FrozenBatchNorm2d = FrozenBatchNorm2d
    resnet.BasicBlock = BasicBlock
    resnet.Bottleneck = Bottleneck
    tv.ops, tv.models, models.resnet = ops, models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.models": models,
                        "torchvision.models.resnet": resnet})


def _install_pil_stub():
    pil = types.ModuleType("PIL")
    pil.__path__ = []
    pil.__fastlrp_stub__ = True
    image = types.ModuleType("PIL.Image")

    def fromarray(*args, **kwargs):
        raise RuntimeError("Pillow is not installed (stand-in module used for the zennit parity tests)")

    image.fromarray = fromarray
    pil.Image = image
    sys.modules.update({"PIL": pil, "PIL.Image": image})


def import_zennit():
    """Import zennit (skipping the test when torch or zennit is missing), stubbing torchvision/PIL if absent."""
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed")
    if "zennit" not in sys.modules:
        if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
            _install_torchvision_stub(torch)
        if importlib.util.find_spec("PIL") is None and "PIL" not in sys.modules:
            _install_pil_stub()
    return importlib.import_module("zennit")
