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
    """[M, N, D] x [M, K, D] -> [M, N, K] squared Euclidean distances (one addmm per modality)."""
    code_sq = (codebook * codebook).sum(-1)  # [M, K]
    frame_sq = (z * z).sum(-1, keepdim=True)  # [M, N, 1]
    # (||E||^2 + ||z||^2) - 2 z.E, accumulated in place into the fresh norm sum (no [M, N, K] copy);
    # one addmm per modality: on a CPU that is faster than one batched baddbmm, with the same result
    distances = code_sq.unsqueeze(1) + frame_sq
    for m in range(z.shape[0]):
        distances[m].addmm_(z[m], codebook[m].t(), alpha=-2.0)
    return distances


def assign_reference(
    z: torch.Tensor, codebook: torch.Tensor, distances: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [M, N] (int64) and squared distances [M, N] of the nearest codeword."""
    if distances is None:
        distances = squared_distances(z.detach(), codebook)
    min_dist, idx = distances.detach().min(dim=-1)  # torch.min returns the first minimal index
    return idx, min_dist


class _NegSafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        if in_place:  # x is the caller's own temporary: no second [M, N, K] buffer
            ctx.mark_dirty(x)
            score = x.clamp_min_(0).sqrt_().neg_()
        else:
            score = x.clamp_min(0).sqrt_().neg_()  # one new tensor, two in-place passes
        ctx.save_for_backward(score)
        return score

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (score,) = ctx.saved_tensors
        # d(-sqrt x)/dx = -1 / (2 sqrt x) = 1 / (2 score) where x > 0, i.e. score < 0
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return torch.where(score < 0, grad / (2 * score), zero), None


def neg_safe_sqrt(x: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """-sqrt(x), that is 0 (with zero gradient) where x <= 0: DQA's score of a squared distance.

    Distances that should be 0 can come out slightly negative after cancellation; the authors'
    float64 code would take sqrt(-tiny) = NaN there. The value is unchanged wherever x > 0.
    `in_place`: overwrite x with the score (x must be a temporary nothing else reads afterwards).
    """
    return _NegSafeSqrt.apply(x, in_place)


def _usage_from_distances(distances: torch.Tensor, frames_per_sample: int, in_place: bool) -> torch.Tensor:
    num_mod, num_frames, num_codes = distances.shape
    if num_frames % frames_per_sample:
        raise ValueError(f"soft_usage: N={num_frames} frames is not a multiple of T={frames_per_sample}")
    probs = torch.softmax(neg_safe_sqrt(distances, in_place=in_place), dim=-1)
    return probs.view(num_mod, num_frames // frames_per_sample, frames_per_sample, num_codes).mean(dim=2)


def soft_usage_reference(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample code-usage distribution [M, B, K]; differentiable with respect to z. Given
    `distances` are read, never written."""
    if distances is None:
        return _usage_from_distances(squared_distances(z, codebook), frames_per_sample, in_place=True)
    return _usage_from_distances(distances, frames_per_sample, in_place=False)


def assign_with_soft_usage_reference(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both of the above from one distance computation (the eager path's fast form): the assignment
    reads the distances first, then the soft usage turns them into scores in place."""
    distances = squared_distances(z, codebook)
    idx, min_dist = assign_reference(z, codebook, distances)
    return idx, min_dist, _usage_from_distances(distances, frames_per_sample, in_place=True)
