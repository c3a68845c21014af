"""VGGish (Hershey et al., 2017) as the published model defines it, and its PCA/quantisation.

Architecture (``vggish_slim.py``): a VGG stack on [96 frames, 64 bands] examples, conv 3x3 (ReLU)
64 / pool / 128 / pool / 256, 256 / pool / 512, 512 / pool, flattened in TensorFlow's
height-width-channel order, fc 4096 (ReLU), fc 4096 (ReLU), fc 128. The embedding layer has no
final non-linearity (the current upstream definition; the torchvggish port adds a ReLU there).
Parameter names are the torchvggish port's (``features.N``, ``embeddings.N``), so its published
``vggish-10086976.pth`` loads as is.

Post-processing (``vggish_postprocess.py``): PCA with whitening ((e - means) @ eigenvectors^T),
clipped to [-2, 2] and quantised to 8 bits (0..255): the format of the released AudioSet
embeddings. The extractor applies it only when asked (``--vggish-postprocess``).
"""

from __future__ import annotations

import torch
from torch import nn

from .settings import VGGISH_POSTPROCESS as POSTPROCESS
from .vgg_stack import conv_stack

EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
_CONV_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """[n, 96, 64] log-mel examples -> [n, 128] embeddings."""

    def __init__(self):
        super().__init__()
        self.features = conv_stack(1, _CONV_LAYERS)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        x = self.features(examples[:, None])  # [n, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # TensorFlow flattens height, width, channel
        return self.embeddings(x)


class VGGishPostprocess(nn.Module):
    """PCA/whitening (``pca``), then clipping and 8-bit quantisation (``pca-quantize``)."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in POSTPROCESS[1:]:
            raise ValueError(f"VGGish post-processing: expected one of {POSTPROCESS[1:]}, got {mode!r}")
        self.mode = mode
        self.register_buffer("pca_eigen_vectors", torch.zeros(EMBEDDING_SIZE, EMBEDDING_SIZE))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = (embeddings - self.pca_means) @ self.pca_eigen_vectors.T
        if self.mode == "pca":
            return x
        x = x.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((x - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))
