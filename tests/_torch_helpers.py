"""Shared helpers for the PyTorch-based tests."""

from __future__ import annotations

import torch
from torch import nn


def randomize(model, seed=0, gain=1.0):
    """Random float64 weights (variance gain / fan_in), non-zero biases and non-trivial
    BatchNorm statistics; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.3)
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * (gain / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * 0.1)
    return model.eval()
