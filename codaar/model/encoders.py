"""Encoders: per modality, input -> (latent z [B, T, D] to be quantized, projection P_m for its decoder).

Spec §2.1-2.3. Every encoder is `ModalityEncoder(features, projection, temporal)`:
  features(x)   -> (h [B, T, in_m], the input of the projection)
  z = temporal(h) [B, T, D]            (what the quantizer and CPC see)
  P = projection(...)                  (what the decoder gets beside the code)
"""

from __future__ import annotations

import torch
from torch import nn


class PassThroughFeatures(nn.Module):
    """Audio, text and plain-vector video: the temporal module and the projection both see x itself."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class ChannelGatedVideoFeatures(nn.Module):
    """Per-frame video semantics from a spatial map x [B, T, H, W, C] (channels last).

    g = spatial mean of x; s = sigmoid(W2 relu(W1 g)); x~ = x * s + x; h = SUM of x~ over positions.
    Returns (h [B, T, C], x~ [B, T, H, W, C]).

    The authors' module also has a "spatial attention" branch (two Linear(C->256)+ReLU, Linear(256->1),
    tanh, then a softmax over a dimension of size 1). A softmax over one element is exactly 1.0, so the
    attention-weighted sum over positions is the plain sum and those Linears never receive gradient
    (spec §2.1, §8.17). It is left out: same output, ~10 GFLOP/step less (spec §9.10).
    tests/test_model_encoders.py checks the equality against a literal implementation with the branch.
    """

    def __init__(self, channels: int = 512, gate_dim: int = 64) -> None:
        super().__init__()
        self.gate_down = nn.Linear(channels, gate_dim, bias=False)
        self.gate_up = nn.Linear(gate_dim, channels, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5:
            raise ValueError(f"video features must be [B, T, H, W, C], got shape {list(x.shape)}")
        positions = x.flatten(2, 3)  # [B, T, H*W, C]
        gate = torch.sigmoid(self.gate_up(torch.relu(self.gate_down(positions.mean(dim=2)))))
        gated = positions * gate.unsqueeze(2) + positions  # the gate rescales, the skip keeps x
        semantic = gated.sum(dim=2)  # a sum, not a mean: what the size-1 softmax "attention" computes
        return semantic, gated.view_as(x)


class SpatialVideoProjection(nn.Module):
    """P_v: x~ [B, T, H, W, C] -> two valid 3x3 convs with BN+ReLU -> [B, T, H-4, W-4, out] (7x7 -> 3x3)."""

    def __init__(self, channels: int = 512, hidden: int = 1024, out: int = 2048) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out, kernel_size=3),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        )

    def forward(self, gated: torch.Tensor) -> torch.Tensor:
        batch, steps = gated.shape[:2]
        frames = gated.flatten(0, 1).permute(0, 3, 1, 2)  # [BT, C, H, W]: one frame at a time
        out = self.net(frames)
        return out.permute(0, 2, 3, 1).reshape(batch, steps, *out.shape[2:], out.shape[1])


class LinearReLUProjection(nn.Module):
    """P_a, P_t and the vector-video P_v: relu(Linear(in -> out)) per time step."""

    def __init__(self, in_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class TextTokenLSTM(nn.Module):
    """BiLSTM over token embeddings [B, L, d_text] -> [B, L, 2*hidden] (spec §1.3 step 5).

    Trainable. Its output is both the text encoder's input and the text decoder's reconstruction
    target (not detached, as in the authors' code: the target partly defines itself, spec §8.15).
    """

    def __init__(self, token_dim: int = 768, hidden: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(token_dim, hidden, num_layers=num_layers, bidirectional=True, batch_first=True)

    @property
    def out_dim(self) -> int:
        return 2 * self.lstm.hidden_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lstm(tokens)[0]  # zero initial state


class TemporalModule(nn.Module):
    """z = Enc_2(Enc_1(Linear(in -> D)(h))): post-norm Transformer layers over T, no positional encoding.

    The layers are deep copies of one freshly built layer, so they start with identical weights,
    as in the authors' code. Their template layer sat unused in the state dict; it is not kept here.
    """

    def __init__(
        self, in_dim: int, dim: int = 256, heads: int = 4, ffn_dim: int = 1024, num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=ffn_dim, dropout=dropout, activation="relu", batch_first=True,
            norm_first=False,
        )
        # TransformerEncoder deep-copies `layer` num_layers times and does not register it.
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input(h))


class ModalityEncoder(nn.Module):
    """One modality's encoder: x -> (z [B, T, D], P_m)."""

    def __init__(self, features: nn.Module, projection: nn.Module, temporal: TemporalModule) -> None:
        super().__init__()
        self.features = features
        self.projection = projection
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        semantic, projection_input = self.features(x)
        return self.temporal(semantic), self.projection(projection_input)
