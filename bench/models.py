"""The benchmark models, written in plain PyTorch (no torchvision here).

Residuals are plain ``out + identity`` in ``forward``; with ``zennit_sum=True``
the same model routes them through zennit's ``Sum`` module instead, which is how
zennit must see them to apply its Norm rule (same weights, same function), and
with ``zennit_sum="captum"`` through Captum's ``Addition_Module``, for Captum's LRP.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1024), nn.ReLU(),
        nn.Linear(1024, 1024), nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


def mnist_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """For 3x16x16 inputs: the dataset benchmark's model, where the store's cost shows."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, num_classes),
    )


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(num_classes: int = 10, size: int = 64, batchnorm: bool = False) -> nn.Module:
    layers, c = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
    s = size // 32
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(512 * s * s, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, num_classes),
    )


class _Residual(nn.Module):
    """``a + b``; with ``zennit_sum=True`` zennit's Sum over a stacked pair, with
    ``zennit_sum="captum"`` Captum's ``Addition_Module``, where that peer must see it."""

    def __init__(self, zennit_sum: bool | str):
        super().__init__()
        self.sum, self.stacked = None, zennit_sum != "captum"
        if zennit_sum == "captum":
            from captum.attr._utils.custom_modules import Addition_Module

            self.sum = Addition_Module()
        elif zennit_sum:
            from zennit.layer import Sum

            self.sum = Sum()

    def forward(self, a, b):
        if self.sum is None:
            return a + b
        if self.stacked:
            return self.sum(torch.stack([a, b], dim=-1))
        return self.sum(a, b)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, zennit_sum: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res = _Residual(zennit_sum)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.res.sum is None:
            out = out + identity
        else:
            out = self.res(out, identity)
        return self.relu2(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, zennit_sum: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, c = [], 64
        for i, w in enumerate([64, 128, 256, 512]):
            for j in range(2):
                blocks.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1, zennit_sum))
                c = w
        self.layers = nn.Sequential(*blocks)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(self.flat(self.avg(x)))


class _SqueezeExcite(nn.Module):
    """x * hardsigmoid(W2 relu(W1 mean(x))): the gate of MobileNetV3 / EfficientNet."""

    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu = nn.Conv2d(c, c // r, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(c // r, c, 1), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class _InvertedResidual(nn.Module):
    """MobileNetV3's block: expand 1x1, depthwise 3x3, squeeze-excitation, project 1x1 (+ x)."""

    def __init__(self, cin: int, cexp: int, cout: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish(),
            nn.Conv2d(cexp, cexp, 3, stride, 1, groups=cexp, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish(),
            _SqueezeExcite(cexp),
            nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


def mobilenet_se(num_classes: int = 10) -> nn.Module:
    """A MobileNetV3-like network in plain torch (hardswish, squeeze-excitation with a
    hard-sigmoid gate, inverted residuals), for 3x64x64 inputs."""
    cfg = [(16, 64, 24, 2), (24, 72, 24, 1), (24, 96, 40, 2), (40, 240, 40, 1), (40, 240, 80, 2), (80, 480, 80, 1)]
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        *[_InvertedResidual(*c) for c in cfg],
        nn.Conv2d(80, 320, 1, bias=False), nn.BatchNorm2d(320), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(320, num_classes),
    )


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


MODELS = {
    "mlp": (lambda zs=False: mlp(), (1, 28, 28)),
    "mnist_cnn": (lambda zs=False: mnist_cnn(), (1, 28, 28)),
    "tiny_cnn": (lambda zs=False: tiny_cnn(), (3, 16, 16)),
    "vgg16": (lambda zs=False: vgg16(), (3, 64, 64)),
    "resnet18": (lambda zs=False: randomize_batchnorm(ResNet18(zennit_sum=zs)), (3, 64, 64)),
    # squeeze-excitation: zennit passes the product's gradient (relevance scaled by the gate)
    # where fastlrp's Gate rule hands relevance through, so their relevance differs by design
    "mobilenet_se": (lambda zs=False: randomize_batchnorm(mobilenet_se()), (3, 64, 64)),
}


def build(name: str, zennit_sum: bool = False, seed: int = 0):
    """(model in eval mode, per-sample input shape); same weights for both variants."""
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory(zennit_sum).eval()
    return model, shape
