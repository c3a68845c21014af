"""The VGG convolution stack both feature models are made of, and torchvision's VGG init."""

from __future__ import annotations

import torch
from torch import nn


def conv_stack(in_channels: int, layers) -> nn.Sequential:
    """conv 3x3 (padding 1) + ReLU for each width, a 2x2 max-pool for each "M"; the module indices
    are those of torchvision's VGG and of the torchvggish port, so their state_dicts load."""
    modules = []
    for width in layers:
        if width == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
    return nn.Sequential(*modules)


def init_like_torchvision(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """The random initialisation torchvision gives VGG (kaiming-normal fan-out convs, N(0, 0.01)
    linears, zero biases): activations keep their scale through the deep stack, which torch's
    default init does not, so --random-weights features are not vanishingly small."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
            nn.init.zeros_(m.bias)
