"""Import zennit 1.x beside fastlrp where torchvision and Pillow are missing.

zennit only needs them at import time for
- ``zennit.types``: ``torchvision.ops.FrozenBatchNorm2d`` (a class in an
  ``isinstance`` tuple for ``BatchNorm``);
- ``zennit.torchvision``: ``torchvision.models.resnet.Bottleneck`` and
  ``BasicBlock`` (classes matched by the ResNet canonizers);
- ``zennit.image``: ``from PIL import Image`` (only used when making images).
:func:`import_zennit` puts minimal stand-ins providing exactly these names in
``sys.modules`` when the real packages are missing. Used by the parity tests and
the benchmarks (bench/ puts tests/ on its path for this module only); nothing in
fastlrp itself needs zennit, so this lives with the tests, not in the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


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
    """Import and return zennit, with stand-ins for torchvision/Pillow if they are missing."""
    import torch

    if "zennit" not in sys.modules:
        if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
            _install_torchvision_stub(torch)
        elif "torchvision" not in sys.modules:
            # a torchvision build beside a CPU torch needs its operator schemas declared first
            from _zoo import load_torchvision

            load_torchvision()
        if importlib.util.find_spec("PIL") is None and "PIL" not in sys.modules:
            _install_pil_stub()
    return importlib.import_module("zennit")
