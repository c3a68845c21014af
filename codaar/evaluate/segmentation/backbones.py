"""Visual backbones of the segmenter: four feature maps at strides 4, 8, 16 and 32.

* `resnet50`: torchvision's ResNet-50 (v1.5: the stride on the 3x3 convolution), with its parameter
  names (`conv1`, `bn1`, `layer1.0.conv1`, ..., `layerN.0.downsample.{0,1}`), so torchvision's published
  `resnet50-*.pth` loads as is (its `fc` is not used).
* `pvt_v2_b5`: PVT-v2-b5 as the PVT release's `pvt_v2.py` defines it (the AVSBench S4 backbone):
  overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2), depths 3/6/40/3, widths 64/128/320/512,
  heads 1/2/5/8, MLP ratio 4 with a depth-wise 3x3 convolution, spatial-reduction attention 8/4/2/1,
  LayerNorm eps 1e-6, with its parameter names (`patch_embed1.proj`, `block3.39.attn.sr`,
  `block1.0.mlp.dwconv.dwconv`, `norm4`, ...), so the release's `pvt_v2_b5.pth` loads as is (its
  `head` is not used).
* `tiny`: a small convolutional pyramid (widths 16/32/64/128, two 3x3 convolutions per stage), random
  initialisation: the default for the built-in avs set on a CPU, where a pretrained backbone is
  neither needed (the objects are coloured shapes) nor affordable.

Published weights load from `--backbone-weights` (safetensors, or a .pth read with
`torch.load(weights_only=True)`), every parameter checked by name and shape; random weights for the
two published backbones only when asked (`random_ok`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from codaar.data import DataFormatError
from codaar.data.extract.weights import read_state_dict

BACKBONES = ("tiny", "resnet50", "pvt_v2_b5")
PUBLISHED = {"resnet50": "torchvision's resnet50-*.pth", "pvt_v2_b5": "the PVT-v2 release's pvt_v2_b5.pth"}


# --------------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    channels = (256, 512, 1024, 2048)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{index}", nn.Sequential(*layers))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        maps = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            maps.append(x)
        return maps


# --------------------------------------------------------------------------------------------- PVT-v2-b5
class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, height, width):
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, height, width):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class Attention(nn.Module):
    """Spatial-reduction attention: keys and values from the map shrunk by `sr_ratio`."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, height, width):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.sr(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)
            source = self.norm(source)
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x, height, width):
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class PVTv2(nn.Module):
    def __init__(self, embed_dims=(64, 128, 320, 512), heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4),
                 depths=(3, 6, 40, 3), sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        self.channels = tuple(embed_dims)
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2,
                                                                   3 if i == 0 else embed_dims[i - 1], embed_dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], heads[i], mlp_ratios[i], sr_ratios[i]) for _ in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
        self.apply(self._init)

    @staticmethod
    def _init(module):  # the release's initialisation (used only with random weights)
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(module.bias)

    def forward(self, x):
        maps = []
        for i in range(1, 5):
            x, height, width = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, height, width)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, height, width)
            maps.append(x)
        return maps


# ------------------------------------------------------------------------------------------------- tiny
class TinyPyramid(nn.Module):
    channels = (16, 32, 64, 128)

    def __init__(self):
        super().__init__()
        stages, inplanes = [], 3
        for index, width in enumerate(self.channels):
            stride = 4 if index == 0 else 2
            stages.append(nn.Sequential(
                nn.Conv2d(inplanes, width, stride + 1 if stride == 4 else 3, stride, stride // 2 if stride == 4 else 1,
                          bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            inplanes = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def build_backbone(name: str) -> nn.Module:
    if name == "resnet50":
        return ResNet50()
    if name == "pvt_v2_b5":
        return PVTv2()
    if name == "tiny":
        return TinyPyramid()
    raise ValueError(f"--avs-backbone: expected one of {BACKBONES}, found {name!r}")


def load_weights(module: nn.Module, path) -> None:
    """Copy a published state_dict into `module`: every tensor of the module must be in the file with its
    shape (names the module lacks, such as a classifier, are ignored); integer buffers such as BatchNorm's
    `num_batches_tracked` are taken as they are."""
    path = Path(path)
    state = read_state_dict(path)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    for name, target in module.state_dict().items():
        if name not in state:
            raise DataFormatError(path, f"weights[{name!r}]", f"a tensor of shape {list(target.shape)}", "missing")
        value = state[name]
        if tuple(value.shape) != tuple(target.shape):
            raise DataFormatError(path, f"weights[{name!r}]", f"shape {list(target.shape)}",
                                  f"shape {list(value.shape)}")
        if target.is_floating_point() and not value.is_floating_point():
            raise DataFormatError(path, f"weights[{name!r}]", "floating-point values", f"dtype {value.dtype}")
        if target.is_floating_point() and not torch.isfinite(value).all():
            raise DataFormatError(path, f"weights[{name!r}]", "finite values", "NaN or Inf")
        with torch.no_grad():
            target.copy_(value)


def backbone(name: str, weights=None, random_ok: bool = False) -> nn.Module:
    """The backbone `name` with the weights at `weights`; the published backbones refuse to start random
    unless `random_ok` (a test or a smoke run)."""
    module = build_backbone(name)
    if weights is not None:
        load_weights(module, weights)
    elif name in PUBLISHED and not random_ok:
        raise ValueError(f"--avs-backbone {name}: expected --backbone-weights FILE ({PUBLISHED[name]}, .pth or "
                         ".safetensors), found none (--random-backbone for random weights, tests only)")
    return module
