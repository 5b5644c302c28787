"""The GPU benchmark's models: bench/models.py's, plus ImageNet-size nets and a tiny one.

- ``vgg16_224``: VGG-16 on 3x224x224, 1000 classes (``models.vgg16`` at size 224),
  initialised as torchvision does (He-normal convs, N(0, 0.01) dense weights) with
  small random biases. torch's default init is not used here: it shrinks the
  activations layer by layer until the biases absorb nearly all relevance, and
  what reaches the input is a small remainder of cancelling terms that float32
  gets wrong by about 1% (seen at 224x224: fastlrp's CPU backend and zennit both
  0.5-2% off the float64 reference, which makes a float32 parity check meaningless).
- ``resnet50``: ResNet-50 (v1.5: the stride on the 3x3 conv) on 3x224x224, 1000
  classes, initialised as torchvision does (He-normal convs, fan-out), BatchNorm
  statistics randomised so that folding is exercised. Plain PyTorch, no torchvision.
- ``tiny_resnet``: the same bottleneck architecture at toy size (3x8x8, two
  blocks, one with a downsample path) for the emulator smoke run.

As in bench/models.py, ``zennit_sum=True`` routes the residual adds through
zennit's ``Sum`` module (same weights, same function).
"""

from __future__ import annotations

import torch
from torch import nn

from models import MODELS as CPU_MODELS
from models import _Residual, randomize_batchnorm, vgg16


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BatchNorm after each, residual add."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, zennit_sum: bool):
        super().__init__()
        cout = width * self.expansion
        # attribute order = registration order: each conv right before its BatchNorm,
        # which is what zennit's SequentialMergeBatchNorm pairs up
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res = _Residual(zennit_sum)
        self.relu3 = nn.ReLU()

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.res.sum is None:
            out = out + identity
        else:
            out = self.res(out, identity)
        return self.relu3(out)


class ResNet(nn.Module):
    """A bottleneck ResNet: ``ResNet()`` is ResNet-50."""

    def __init__(self, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem: int = 64, stem_kernel: int = 7,
                 stem_stride: int = 2, num_classes: int = 1000, zennit_sum: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, stem_kernel, stem_stride, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, c = [], stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(Bottleneck(c, w, 2 if (j == 0 and i > 0) else 1, zennit_sum))
                c = w * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(self.flat(self.avg(x)))


def vgg16_224(zennit_sum: bool = False) -> nn.Module:
    net = vgg16(num_classes=1000, size=224)
    for m in net.modules():  # torchvision's initialisation, plus small non-zero biases
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(m.bias, 0.0, 0.01)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.normal_(m.bias, 0.0, 0.01)
    return net


def resnet50(zennit_sum: bool = False) -> nn.Module:
    return randomize_batchnorm(ResNet(zennit_sum=zennit_sum))


def tiny_resnet(zennit_sum: bool = False) -> nn.Module:
    net = ResNet(blocks=(1, 1), widths=(2, 4), stem=8, stem_kernel=3, stem_stride=1, num_classes=5,
                 zennit_sum=zennit_sum)
    return randomize_batchnorm(net)


MODELS = {
    "vgg16_224": (vgg16_224, (3, 224, 224)),
    "resnet50": (resnet50, (3, 224, 224)),
    **CPU_MODELS,
    "tiny_resnet": (tiny_resnet, (3, 8, 8)),
}


def build(name: str, zennit_sum: bool = False, seed: int = 0):
    """(model in eval mode, per-sample input shape); same weights for both variants."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory(zennit_sum).eval()
    return model, shape
