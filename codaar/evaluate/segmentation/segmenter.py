"""The query-conditioned segmenter of the AVSBench-S4 task (docs/method.md §7.6).

backbone (four maps, strides 4-32) -> per stage a 3x3 convolution to `width` channels -> the query
fused into every stage by TPAVI -> a top-down decoder (upsample, add, 3x3 refine) -> one mask logit
map per frame at stride 4, upsampled to the frame.

TPAVI (the authors' `model/TPAVI.py`, dot-product mode): the query q of a frame is aligned to the
stage's channels (`align`), broadcast over the map, and x + W_z(y) with y_i = sum_j (theta(x_i) .
phi(q)) g(x_j) / N, then a LayerNorm over channels; W_z's BatchNorm starts at zero, so a fresh fusion
is the identity. theta(x_i) . phi(q) is a bilinear match of each position with the query: it is
how the query says which object sounds. The sum runs over the positions of one frame (the authors'
over the five frames of a clip); so a frame's mask depends on that frame and its query only, and
training on the first frame's mask needs only the first frame.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TPAVI(nn.Module):
    def __init__(self, channels: int, query_dim: int):
        super().__init__()
        inter = max(channels // 2, 1)
        self.align = nn.Linear(query_dim, channels)
        self.g = nn.Conv2d(channels, inter, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Linear(channels, inter)  # a 1x1 convolution of the broadcast query
        self.W_z = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W_z[1].weight)
        nn.init.zeros_(self.W_z[1].bias)
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """x [n, C, H, W], query [n, Q] -> [n, C, H, W]."""
        n, _, height, width = x.shape
        match = torch.einsum("nchw,nc->nhw", self.theta(x), self.phi(self.align(query)))  # theta(x_i) . phi(q)
        mean_g = self.g(x).mean((2, 3))  # sum_j g(x_j) / N
        y = match[:, None] * mean_g[:, :, None, None]
        z = x + self.W_z(y)
        return self.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Segmenter(nn.Module):
    """frames [n, 3, S, S] in 0..1 and their queries [n, Q] -> mask logits [n, S, S]."""

    def __init__(self, backbone: nn.Module, query_dim: int, width: int = 64):
        super().__init__()
        self.backbone = backbone
        channels = backbone.channels
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                                   nn.ReLU(inplace=True)) for c in channels)
        self.fusion = nn.ModuleList(TPAVI(width, query_dim) for _ in channels)
        self.refine = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                                  nn.ReLU(inplace=True)) for _ in channels[:-1])
        self.head = nn.Sequential(nn.Conv2d(width, width // 2, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width // 2, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        maps = self.backbone((frames - self.mean) / self.std)
        fused = [fuse(lateral(m), query) for m, lateral, fuse in zip(maps, self.lateral, self.fusion)]
        x = fused[-1]
        for level in range(len(fused) - 2, -1, -1):
            x = F.interpolate(x, size=fused[level].shape[2:], mode="bilinear", align_corners=False)
            x = self.refine[level](x + fused[level])
        logits = self.head(x)
        return F.interpolate(logits, size=frames.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) and the masks (the authors' S4 loss, `F5_IoU_BCELoss`) plus
    1 - soft IoU per frame (codaar's: small objects, a few % of the frame, otherwise train to an empty mask
    first; AVSBench's objects are large)."""
    prob = torch.sigmoid(logits)
    inter = (prob * masks).sum((-2, -1))
    union = (prob + masks - prob * masks).sum((-2, -1))
    return F.binary_cross_entropy_with_logits(logits, masks) + (1 - (inter + 1) / (union + 1)).mean()
