"""VGG-19's convolutional part up to pool5: the paper's video input (7 x 7 x 512 per second).

torchvision's ``vgg19`` is the reference, but its PyPI wheels link CUDA builds of libtorch and
do not load next to the CPU build of torch 2.13 (``operator torchvision::nms does not exist``),
so the layer stack is written here with torchvision's parameter names (``features.0.weight`` ...
``features.34.bias``): its published ``vgg19-dcbb9e9d.pth`` loads as is (the classifier's
parameters are ignored). Input as torchvision's ImageNet weights expect: RGB scaled to [0, 1],
normalised by the ImageNet mean and standard deviation. A 224 x 224 frame gives a 7 x 7 map.
"""

from __future__ import annotations

import torch
from torch import nn

from .vgg_stack import conv_stack

_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNELS = 512
STRIDE = 32  # five 2x2 max-pools


class VGG19Pool5(nn.Module):
    """uint8 RGB frames [n, S, S, 3] -> pool5 maps [n, S/32, S/32, 512] (channels last, as stored)."""

    def __init__(self):
        super().__init__()
        self.features = conv_stack(3, _LAYERS)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).to(self.features[0].weight.dtype) / 255.0
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalise(frames)).permute(0, 2, 3, 1)
