"""Nearest-code assignment (paper Eq. 3) and the soft code usage that DQA needs.

For every modality m and frame n:

    d[m, n, k] = ||z[m, n]||^2 + ||E[m, k]||^2 - 2 z[m, n] . E[m, k]
    idx[m, n]  = argmin_k d[m, n, k]          (first index wins a tie, as torch.argmin)

The soft usage of sample b (its T frames n = b*T + t) is, as in the authors' CMCM code,

    P[m, b, k] = 1/T * sum_t softmax_k(-sqrt(d[m, n, k]))

Shapes: z [M, N, D], codebook [M, K, D], N = B * T frames in row-major (b, t) order.
The eager reference materialises the [M, N, K] distances; the Triton kernels never do.
"""

from __future__ import annotations

import torch


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[M, N, D] x [M, K, D] -> [M, N, K] squared Euclidean distances (one batched addmm)."""
    code_sq = (codebook * codebook).sum(-1)  # [M, K]
    frame_sq = (z * z).sum(-1, keepdim=True)  # [M, N, 1]
    return torch.baddbmm(code_sq.unsqueeze(1) + frame_sq, z, codebook.transpose(1, 2), alpha=-2.0)


def assign_reference(
    z: torch.Tensor, codebook: torch.Tensor, distances: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [M, N] (int64) and squared distances [M, N] of the nearest codeword."""
    if distances is None:
        distances = squared_distances(z.detach(), codebook)
    min_dist, idx = distances.detach().min(dim=-1)  # torch.min returns the first minimal index
    return idx, min_dist


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        root = x.clamp_min(0).sqrt_()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (root,) = ctx.saved_tensors
        return torch.where(root > 0, grad / (2 * root), torch.zeros((), dtype=grad.dtype, device=grad.device))


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt that is 0 (with zero gradient) where x <= 0.

    Distances that should be 0 can come out slightly negative after cancellation; the authors'
    float64 code would take sqrt(-tiny) = NaN there. The value is unchanged wherever x > 0.
    """
    return _SafeSqrt.apply(x)


def soft_usage_reference(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample code-usage distribution [M, B, K]; differentiable with respect to z."""
    if distances is None:
        distances = squared_distances(z, codebook)
    num_mod, num_frames, num_codes = distances.shape
    if num_frames % frames_per_sample:
        raise ValueError(f"soft_usage: N={num_frames} frames is not a multiple of T={frames_per_sample}")
    probs = torch.softmax(-safe_sqrt(distances), dim=-1)
    return probs.view(num_mod, num_frames // frames_per_sample, frames_per_sample, num_codes).mean(dim=2)


def assign_with_soft_usage_reference(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both of the above from one distance computation (the eager path's fast form)."""
    distances = squared_distances(z, codebook)
    idx, min_dist = assign_reference(z, codebook, distances)
    return idx, min_dist, soft_usage_reference(z, codebook, frames_per_sample, distances)
