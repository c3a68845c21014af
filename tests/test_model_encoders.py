"""Encoders (docs/method.md §3.1-3.3): the video encoder without its dead attention branch, P_v, temporal modules."""

from __future__ import annotations

import torch
from torch import nn

from codaar.model.encoders import (
    ChannelGatedVideoFeatures,
    SpatialVideoProjection,
    TemporalModule,
    TextTokenLSTM,
)


class AuthorsVideoEncoderWithAttention(nn.Module):
    """A literal implementation WITH the "spatial attention" branch (docs/method.md §3.1 step 4; docs/design.md §2).

    Its softmax runs over a dimension of size 1, so every weight is exactly 1.0.
    """

    def __init__(self, gate: ChannelGatedVideoFeatures, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.gate = gate  # the channel gate is shared, so only the attention branch differs
        self.affine_content = nn.Linear(channels, hidden)  # on the 49 positions
        self.affine_query = nn.Linear(channels, hidden)  # on the pooled vector
        self.affine_att = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, height, width, channels = x.shape
        frames = x.reshape(batch * steps, height * width, channels)
        pooled = frames.mean(dim=1)
        gate = torch.sigmoid(self.gate.gate_up(torch.relu(self.gate.gate_down(pooled))))
        gated = frames * gate.unsqueeze(1) + frames
        content = torch.relu(self.affine_content(gated))  # [BT, 49, 256]
        query = torch.relu(self.affine_query(gated.mean(dim=1)))  # [BT, 256]
        logits = self.affine_att(torch.tanh(content + query.unsqueeze(1)))  # [BT, 49, 1]
        weights = torch.softmax(logits, dim=-1)  # over a size-1 axis: all exactly 1.0
        semantic = (weights * gated).sum(dim=1)  # weighted SUM over positions
        return semantic.view(batch, steps, channels), gated.view(batch, steps, height, width, channels)


def test_video_encoder_without_dead_branch_equals_literal_with_it():
    torch.manual_seed(0)
    channels = 32
    ours = ChannelGatedVideoFeatures(channels, gate_dim=8)
    literal = AuthorsVideoEncoderWithAttention(ours, channels, hidden=16)
    x = torch.randn(3, 4, 7, 7, channels)

    semantic, gated = ours(x)
    semantic_lit, gated_lit = literal(x)

    assert semantic.shape == (3, 4, channels) and gated.shape == x.shape
    assert torch.equal(semantic, semantic_lit)
    assert torch.equal(gated, gated_lit)
    # the branch is dead: its three Linears get exactly zero gradient
    semantic_lit.square().sum().backward()
    for layer in (literal.affine_content, literal.affine_query, literal.affine_att):
        assert torch.count_nonzero(layer.weight.grad) == 0 and torch.count_nonzero(layer.bias.grad) == 0
    assert torch.count_nonzero(ours.gate_down.weight.grad) > 0  # the gate itself does learn


def test_video_semantic_vector_is_sum_of_gated_map():
    torch.manual_seed(1)
    features = ChannelGatedVideoFeatures(16, gate_dim=4)
    x = torch.randn(2, 3, 5, 5, 16)
    semantic, gated = features(x)
    pooled = x.mean(dim=(2, 3))
    gate = torch.sigmoid(features.gate_up(torch.relu(features.gate_down(pooled))))
    torch.testing.assert_close(gated, x * gate[:, :, None, None, :] + x)
    torch.testing.assert_close(semantic, gated.sum(dim=(2, 3)))


def test_spatial_projection_shape_7x7_to_3x3():
    projection = SpatialVideoProjection(channels=8, hidden=12, out=20)
    out = projection(torch.randn(2, 3, 7, 7, 8))
    assert out.shape == (2, 3, 3, 3, 20)
    assert (out >= 0).all()  # ends in ReLU


def test_temporal_layers_start_identical_and_template_not_registered():
    torch.manual_seed(2)
    temporal = TemporalModule(in_dim=10, dim=16, heads=4, ffn_dim=32, num_layers=2, dropout=0.1)
    first, second = temporal.layers.layers
    state_1, state_2 = first.state_dict(), second.state_dict()
    assert state_1.keys() == state_2.keys()
    for name in state_1:
        assert torch.equal(state_1[name], state_2[name]), name
    assert first.self_attn.in_proj_weight.data_ptr() != second.self_attn.in_proj_weight.data_ptr()  # copies, not shared
    assert not any("encoder_layer" in name for name, _ in temporal.named_parameters())
    layer = temporal.layers.layers[0]
    assert not layer.norm_first and layer.self_attn.num_heads == 4 and layer.linear1.out_features == 32
    assert temporal(torch.randn(2, 5, 10)).shape == (2, 5, 16)


def test_text_lstm_shape():
    lstm = TextTokenLSTM(token_dim=12, hidden=6)
    assert lstm(torch.randn(2, 10, 12)).shape == (2, 10, 12)
    assert lstm.lstm.bidirectional and lstm.lstm.num_layers == 2 and lstm.lstm.batch_first
