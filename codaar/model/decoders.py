"""Decoders: each modality reconstructs its own input from (its decoder code, its projection P_m).

docs/method.md §3.4. The code is the quantizer's `tri_code[m]` [B, T, M*D]: the full codebook row at m's own
index under preset `official` (different per decoder), the concatenated quantized latents under
`paper` (the same for every decoder). Both go through two Linear layers (no activation between) to
c_m [B, T, D] before they meet P_m.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codaar.runtime.distributed import gather_batch

REDUCTIONS = ("mean", "sum")


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error: "mean" over every element (authors' mse, docs/method.md §9.3), or "sum" over everything
    but the batch dimension, averaged over the batch (the paper's summed squared norms).

    mask [B, T] bool (padded text: True = a real step): padded steps count for nothing, and "mean"
    is over the real steps' elements. An all-True mask gives the unmasked loss and gradients bit
    for bit (the steps are multiplied by 1 and the mean rescaled by exactly 1). Under DDP the
    real steps are counted over all ranks' clips, so the ranks' losses, averaged by DDP, are the
    mean over the whole batch's real steps (as the unmasked mean is)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reconstruction_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    scale = None
    if mask is not None:
        weight = mask.to(prediction.dtype).view(*mask.shape, *[1] * (prediction.dim() - mask.dim()))
        prediction, target = prediction * weight, target * weight
        everywhere = gather_batch(mask.to(torch.uint8), dim=0)  # this mask itself in one process
        scale = everywhere.numel() / everywhere.sum().clamp(min=1).to(prediction.dtype)
    if reduction == "sum":
        return (prediction - target).pow(2).sum() / prediction.shape[0]
    loss = F.mse_loss(prediction, target)
    return loss if scale is None else loss * scale


class CodeProjection(nn.Module):
    """c_m = Linear(D -> D)(Linear(M*D -> D)(code)); two linears with nothing between, as coded."""

    def __init__(self, code_dim: int, dim: int = 256) -> None:
        super().__init__()
        self.reduce = nn.Linear(code_dim, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.mix(self.reduce(code))


class VectorDecoder(nn.Module):
    """Audio, text, vector video: x_hat = Linear(D + P -> d_m)([c_m ; P_m]) per time step."""

    def __init__(self, code_dim: int, out_dim: int, dim: int = 256, projection_dim: int = 256) -> None:
        super().__init__()
        self.code = CodeProjection(code_dim, dim)
        self.out = nn.Linear(dim + projection_dim, out_dim)

    def forward(self, code: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.code(code), projection], dim=-1))


class ResidualBlock(nn.Module):
    """y = relu(r + Conv1x1(relu(Conv3x3(r)))), r = relu(u).

    The authors' block starts with an in-place ReLU, which also rewrites the tensor the skip
    connection adds, so the skip carries relu(u), not u (docs/method.md §3.4). Written out explicitly here.
    """

    def __init__(self, channels: int = 1024) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv1x1 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        r = torch.relu(u)
        return torch.relu(r + self.conv1x1(torch.relu(self.conv3x3(r))))


class SpatialVideoDecoder(nn.Module):
    """Video map from (code, P_v [B, T, h, w, P]) -> x_hat [B, T, h+4, w+4, C] (3x3 -> 7x7).

    c_v is broadcast over the h x w grid and put before P_v on the channel axis; then
    ConvT 3x3 -> residual block -> ConvT 3x3 -> ReLU -> ConvT 1x1.
    """

    def __init__(
        self, code_dim: int, dim: int = 256, projection_channels: int = 2048, hidden: int = 1024,
        out_channels: int = 512,
    ) -> None:
        super().__init__()
        self.code = CodeProjection(code_dim, dim)
        self.expand = nn.ConvTranspose2d(dim + projection_channels, hidden, kernel_size=3)
        self.residual = ResidualBlock(hidden)
        self.expand_out = nn.ConvTranspose2d(hidden, out_channels, kernel_size=3)
        self.out = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=1)
        self.channels_last = False  # set by codaar.model.compiled.video_channels_last (weights too)

    def forward(self, code: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        batch, steps, height, width, _ = projection.shape
        spatial = projection.flatten(0, 1).permute(0, 3, 1, 2)  # [BT, P, h, w]
        code = self.code(code).flatten(0, 1)[:, :, None, None].expand(-1, -1, height, width)
        x = torch.cat([code, spatial], dim=1)  # NCHW: the broadcast code makes cat choose that layout
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.expand(x)
        x = self.expand_out(self.residual(x))
        x = self.out(torch.relu(x))
        return x.permute(0, 2, 3, 1).reshape(batch, steps, *x.shape[2:], x.shape[1])
