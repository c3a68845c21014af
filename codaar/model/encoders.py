"""Encoders: per modality, input -> (latent z [B, T, D] to be quantized, projection P_m for its decoder).

docs/method.md §3.1-3.3. Every encoder is `ModalityEncoder(features, projection, temporal)`:
  features(x)   -> (h [B, T, in_m], the input of the projection)
  z = temporal(h) [B, T, D]            (what the quantizer and CPC see)
  P = projection(...)                  (what the decoder gets beside the code)

Per-clip text comes with a mask [B, L] (True = a real token, real tokens first): the text BiLSTM and
the text encoder's transformer then never read padding. With an all-True mask every output and
every gradient is the unmasked path's, bit for bit (tests/test_model_mask.py).
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
    (docs/method.md §3.1, §9.17). It is left out: same output, ~10 GFLOP/step less (docs/design.md §2).
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
        self.channels_last = False  # set by codaar.model.compiled.video_channels_last (weights too)

    def forward(self, gated: torch.Tensor) -> torch.Tensor:
        batch, steps = gated.shape[:2]
        frames = gated.flatten(0, 1).permute(0, 3, 1, 2)  # [BT, C, H, W]: one frame at a time
        if self.channels_last:  # (a view of a contiguous map is channels_last already: then no copy)
            frames = frames.contiguous(memory_format=torch.channels_last)
        out = self.net(frames)
        return out.permute(0, 2, 3, 1).reshape(batch, steps, *out.shape[2:], out.shape[1])


class LinearReLUProjection(nn.Module):
    """P_a, P_t and the vector-video P_v: relu(Linear(in -> out)) per time step."""

    def __init__(self, in_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def reverse_real(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, L, F] with each row's first lengths[b] steps in reverse order and its padding left in
    place after them (its own inverse)."""
    steps = torch.arange(x.shape[1], device=x.device)
    length = lengths.unsqueeze(1)
    source = torch.where(steps < length, length - 1 - steps, steps)
    return x.gather(1, source.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class TextTokenLSTM(nn.Module):
    """BiLSTM over token embeddings [B, L, d_text] -> [B, L, 2*hidden] (docs/method.md §2.3 step 5).

    Trainable. Its output is both the text encoder's input and the text decoder's reconstruction
    target (not detached, as in the authors' code: the target partly defines itself, docs/method.md §9.15).

    With a mask [B, L] (True = a real token, real tokens first) each caption is read as if it were
    unpadded: the forward direction is causal, so padding after the last real token never reaches
    a real step; the backward direction must start at the last real token, so for a caption with
    padding it runs over its real tokens reversed in place (`reverse_real`). That is done layer by
    layer (layer 2 reads both directions of layer 1), with fixed shapes and no host read, so the
    step stays capturable in a CUDA graph. Padded steps of the output are zero.
    A full caption takes its backward half from the same bidirectional call as the unmasked path
    (the reversed run only serves captions with padding), so an all-True mask gives the unmasked
    output and gradients bit for bit.
    """

    def __init__(self, token_dim: int = 768, hidden: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(token_dim, hidden, num_layers=num_layers, bidirectional=True, batch_first=True)

    @property
    def out_dim(self) -> int:
        return 2 * self.lstm.hidden_size

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:  # layer by layer as below, so that an all-True mask changes no rounding
            h = tokens
            for layer in range(self.lstm.num_layers):
                h = self._layer(h, layer, ("", "_reverse"))
            return h
        lengths, full = mask.sum(dim=1), mask.all(dim=1)[:, None, None]
        hidden = self.lstm.hidden_size
        h = tokens
        for layer in range(self.lstm.num_layers):
            both = self._layer(h, layer, ("", "_reverse"))
            backward = reverse_real(self._layer(reverse_real(h, lengths), layer, ("_reverse",)), lengths)
            h = torch.cat([both[..., :hidden], torch.where(full, both[..., hidden:], backward)], dim=-1)
        return h * mask.unsqueeze(-1).to(h.dtype)

    def _layer(self, x: torch.Tensor, layer: int, directions: tuple[str, ...]) -> torch.Tensor:
        """One layer of the BiLSTM, both directions ("", "_reverse") or one, with its own weights:
        the operation nn.LSTM itself calls, from a zero state."""
        lstm = self.lstm
        weights = [getattr(lstm, f"{name}_l{layer}{direction}") for direction in directions
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if torch.compiler.is_compiling():
            # (one direction alone runs forward in time, as torch.lstm runs it: the caller reversed x)
            return torch.cat([unrolled_lstm(x, *weights[4 * i : 4 * i + 4], reverse=i == 1)
                              for i in range(len(directions))], dim=-1)
        zeros = x.new_zeros(len(directions), x.shape[0], lstm.hidden_size)
        # (no dropout argument: this BiLSTM has none between its layers)
        out = torch.lstm(x, (zeros, zeros), weights, True, 1, 0.0, self.training, len(directions) == 2, True)[0]
        # batch-first output is a transposed view; the masked path's torch.cat/where make it
        # contiguous, and the next layer's matmul rounds differently on the two layouts (float64)
        return out.contiguous()


def unrolled_lstm(x: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: torch.Tensor,
                  bias_hh: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """One direction of one LSTM layer over x [B, L, F] from a zero state, step by step: [B, L, H].

    What torch.compile traces `torch.lstm` to anyway, written out because on the CPU its tracing
    picks oneDNN's inference-only LSTM kernel for an input that needs no gradient (the text tokens)
    although the weights do, and the compiled step then fails (torch 2.13). Gates in torch's order
    (input, forget, cell, output); the same values as `torch.lstm` to rounding."""
    steps = x.shape[1]
    inputs = nn.functional.linear(x, weight_ih, bias_ih)  # [B, L, 4H]: every step's input term at once
    h = c = x.new_zeros(x.shape[0], weight_hh.shape[1])
    outputs = [h] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        gate_in, gate_forget, cell, gate_out = (inputs[:, t] + nn.functional.linear(h, weight_hh, bias_hh)).chunk(4, 1)
        c = torch.sigmoid(gate_forget) * c + torch.sigmoid(gate_in) * torch.tanh(cell)
        h = torch.sigmoid(gate_out) * torch.tanh(c)
        outputs[t] = h
    return torch.stack(outputs, dim=1)


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

    def forward(self, h: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """padding [B, T] bool: True at the steps no step attends to (padded text tokens), or None."""
        if padding is not None and not self.training and not bool(padding.any()):
            # torch's fused inference kernel rounds differently once it is given a mask, so
            # without padding it gets none (training uses the exact path; this host read happens
            # only in eval mode, never in a training step)
            padding = None
        return self.layers(self.input(h), src_key_padding_mask=padding)


class ModalityEncoder(nn.Module):
    """One modality's encoder: x -> (z [B, T, D], P_m)."""

    def __init__(self, features: nn.Module, projection: nn.Module, temporal: TemporalModule) -> None:
        super().__init__()
        self.features = features
        self.projection = projection
        self.temporal = temporal

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """padding [B, T] bool, True at padded steps: the temporal module does not attend to them."""
        semantic, projection_input = self.features(x)
        return self.temporal(semantic, padding), self.projection(projection_input)
