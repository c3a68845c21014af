"""The authors' downstream heads (docs/method.md §7.2, §7.3) and the ExpLogLoss of the AVVP script."""

from __future__ import annotations

import torch
from torch import nn


class AVEHead(nn.Module):
    """`Semantic_Decoder`: Linear(in->in) per step -> max over T -> Linear(in->C); no activation."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.step = nn.Linear(in_dim, in_dim)
        self.out = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, in] -> [B, C]
        return self.out(self.step(x).max(dim=1).values)


class AVVPHead(nn.Module):
    """`Semantic_Decoder_AVVP_1`, per segment: in -> in -> in/2 -> in/2 -> C+1 linear maps, no activation."""

    def __init__(self, in_dim: int, num_outputs: int):
        super().__init__()
        half = max(in_dim // 2, 1)
        self.layers = nn.Sequential(nn.Linear(in_dim, in_dim), nn.Linear(in_dim, half), nn.Linear(half, half),
                                    nn.Linear(half, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, in] -> [B, T, C+1] logits
        return self.layers(x)


class ExpLogLoss(nn.Module):
    """-mean_n sum_c y[n,c] * log_softmax(logits[n])_c * exp(-alpha_c); alpha learnable, init 0.1."""

    def __init__(self, num_outputs: int, init: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_outputs,), init))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1, target.shape[-1])
        return -(target * torch.log_softmax(logits, dim=-1) * torch.exp(-self.alpha)).sum(dim=-1).mean()
