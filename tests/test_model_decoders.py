"""Decoders (docs/method.md §3.4): the residual block's in-place ReLU behaviour, shapes, loss reductions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codaar.model.decoders import ResidualBlock, SpatialVideoDecoder, VectorDecoder, reconstruction_loss


class InPlaceResidualBlock(nn.Module):
    """The authors' pattern: x + block(x) where the block starts with ReLU(inplace=True)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.block(x)  # the in-place ReLU has already rewritten x when the sum reads it
        return F.relu(x)


def test_residual_block_equals_in_place_relu_literal():
    torch.manual_seed(0)
    ours = ResidualBlock(6)
    literal = InPlaceResidualBlock(6)
    literal.block[1].weight.data.copy_(ours.conv3x3.weight)
    literal.block[3].weight.data.copy_(ours.conv1x1.weight)
    leaf = torch.randn(2, 6, 5, 5, requires_grad=True)
    leaf_lit = leaf.detach().clone().requires_grad_(True)

    y = ours(leaf)
    y_lit = literal(leaf_lit * 1.0)  # a non-leaf, so the in-place ReLU is allowed
    torch.testing.assert_close(y, y_lit, rtol=0, atol=0)
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    (y_lit * torch.arange(y.numel()).view_as(y)).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_lit.grad)

    # and it is NOT the textbook block that adds the un-rectified input
    textbook = F.relu(leaf + ours.conv1x1(F.relu(ours.conv3x3(F.relu(leaf)))))
    assert not torch.allclose(textbook, y)


def test_spatial_video_decoder_shape_3x3_to_7x7():
    decoder = SpatialVideoDecoder(code_dim=24, dim=8, projection_channels=20, hidden=12, out_channels=16)
    out = decoder(torch.randn(2, 3, 24), torch.randn(2, 3, 3, 3, 20))
    assert out.shape == (2, 3, 7, 7, 16)
    assert decoder.expand.in_channels == 8 + 20  # code channels before P_v


def test_spatial_video_decoder_puts_code_before_projection():
    torch.manual_seed(1)
    decoder = SpatialVideoDecoder(code_dim=6, dim=4, projection_channels=5, hidden=3, out_channels=2)
    code, projection = torch.randn(1, 2, 6), torch.randn(1, 2, 3, 3, 5)
    c = decoder.code(code).flatten(0, 1)[:, :, None, None].expand(-1, -1, 3, 3)
    spatial = projection.flatten(0, 1).permute(0, 3, 1, 2)
    x = decoder.expand(torch.cat([c, spatial], dim=1))
    x = decoder.out(torch.relu(decoder.expand_out(decoder.residual(x))))
    torch.testing.assert_close(decoder(code, projection), x.permute(0, 2, 3, 1).reshape(1, 2, 7, 7, 2))


def test_vector_decoder_is_linear_on_code_then_concat():
    torch.manual_seed(2)
    decoder = VectorDecoder(code_dim=12, out_dim=5, dim=4, projection_dim=3)
    code, projection = torch.randn(2, 3, 12), torch.randn(2, 3, 3)
    c = decoder.code.mix(decoder.code.reduce(code))
    expected = decoder.out(torch.cat([c, projection], dim=-1))
    torch.testing.assert_close(decoder(code, projection), expected)
    assert decoder(code, projection).shape == (2, 3, 5)


def test_reconstruction_loss_reductions():
    prediction = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    target[1] = 2.0
    # squared errors: sample 0 -> 12 ones, sample 1 -> 12 fours
    assert reconstruction_loss(prediction, target, "mean").item() == (12 * 1 + 12 * 4) / 24
    assert reconstruction_loss(prediction, target, "sum").item() == (12 * 1 + 12 * 4) / 2
