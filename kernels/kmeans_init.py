"""Data-dependent codebook init: k-means++ seeding (+ optional Lloyd steps), eager PyTorch.

Runs once, before the first codebook update, never inside the training step. Everything is
vectorised over frames and groups; the only Python loop is over the K picks of k-means++ (inherent
to the method), and it stays on the device: each pick is one `torch.multinomial` on the current
squared distances, drawn from a caller-seeded generator (no host synchronisation in the loop).

Shapes: x [G, N, F] = G independent groups (one per modality for the per-modality init, one for
the aligned init over the concatenated modalities) of N frames with F features; K codes.

k-means++ (Arthur & Vassilvitskii 2007): first centre uniform over the frames, every further one
drawn with probability proportional to its squared distance to the nearest centre chosen so far.

Fallback when K exceeds the number of distinct frames: once every frame coincides with a chosen
centre (all distances 0), the remaining picks are drawn uniformly over the frames. Such a pick
duplicates an existing centre; it is flagged in the returned `duplicate` mask, and
`kmeans_codebook` adds Gaussian jitter (std `jitter` x the group's RMS) to those codewords so no
two codes are identical. A frame drawn while it is at distance 0 from a centre (an identical
frame at another position) counts as a duplicate too.
"""

from __future__ import annotations

import torch


def _pairwise_sq(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[G, N, F] x [G, K, F] -> [G, N, K] squared distances, clamped at 0."""
    return torch.cdist(x, centres).square()


def kmeans_plus_plus(x: torch.Tensor, num_codes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding of each group of x [G, N, F].

    Returns (picks [G, K] int64: the frame chosen as centre k, duplicate [G, K] bool: the pick
    coincided with an earlier centre; see the module docstring for K > distinct frames)."""
    if x.dim() != 3 or x.shape[1] < 1:
        raise ValueError(f"kmeans_plus_plus: x must be [G, N, F] with N >= 1, got {list(x.shape)}")
    if num_codes < 1:
        raise ValueError(f"kmeans_plus_plus: num_codes must be >= 1, got {num_codes}")
    groups, frames, feats = x.shape
    picks = torch.empty(groups, num_codes, dtype=torch.long, device=x.device)
    duplicate = torch.zeros(groups, num_codes, dtype=torch.bool, device=x.device)
    uniform = torch.ones(groups, frames, dtype=x.dtype, device=x.device)
    nearest = torch.full((groups, frames), float("inf"), dtype=x.dtype, device=x.device)
    for k in range(num_codes):
        if k == 0:
            weights = uniform
        else:  # all frames covered (K > distinct frames): fall back to uniform draws, flagged
            weights = torch.where(nearest.sum(dim=1, keepdim=True) > 0, nearest, uniform)
        pick = torch.multinomial(weights, 1, generator=generator)  # [G, 1]
        picks[:, k] = pick[:, 0]
        if k > 0:
            duplicate[:, k] = nearest.gather(1, pick)[:, 0] <= 0
        centre = x.gather(1, pick.unsqueeze(-1).expand(groups, 1, feats))  # [G, 1, F]
        nearest = torch.minimum(nearest, (x - centre).square().sum(-1))  # exact 0 for identical frames
    return picks, duplicate


def lloyd(x: torch.Tensor, centres: torch.Tensor, iterations: int) -> torch.Tensor:
    """`iterations` Lloyd steps from centres [G, K, F]; a centre with no frame stays where it is."""
    groups, _, feats = x.shape
    for _ in range(iterations):
        nearest = _pairwise_sq(x, centres).argmin(dim=-1)  # [G, N]
        sums = torch.zeros_like(centres).scatter_add_(1, nearest.unsqueeze(-1).expand(-1, -1, feats), x)
        sizes = torch.zeros(centres.shape[:2], dtype=x.dtype, device=x.device).scatter_add_(
            1, nearest, torch.ones_like(nearest, dtype=x.dtype))
        centres = torch.where(sizes.unsqueeze(-1) > 0, sums / sizes.clamp(min=1).unsqueeze(-1), centres)
    return centres


def kmeans_codebook(
    x: torch.Tensor,
    num_codes: int,
    generator: torch.Generator,
    *,
    iterations: int = 0,
    jitter: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codewords for each group of x [G, N, F]: k-means++ frames, then `iterations` Lloyd steps.

    Returns (centres [G, K, F], sizes [G, K]: frames nearest to each centre, picks [G, K]: the
    seeding frames, duplicate [G, K]: codes that got the K > distinct-frames fallback, jittered).
    With iterations = 0 the centre of code k is exactly frame picks[:, k] (bar duplicates' jitter).
    """
    picks, duplicate = kmeans_plus_plus(x, num_codes, generator)
    groups, _, feats = x.shape
    centres = x.gather(1, picks.unsqueeze(-1).expand(groups, num_codes, feats))
    rms = x.square().mean(dim=(1, 2), keepdim=True).sqrt()  # [G, 1, 1]
    noise = torch.randn(centres.shape, generator=generator, device=x.device, dtype=x.dtype)
    centres = torch.where(duplicate.unsqueeze(-1), centres + jitter * rms * noise, centres)
    centres = lloyd(x, centres, iterations)
    nearest = _pairwise_sq(x, centres).argmin(dim=-1)
    sizes = torch.zeros(groups, num_codes, dtype=x.dtype, device=x.device).scatter_add_(
        1, nearest, torch.ones_like(nearest, dtype=x.dtype))
    return centres, sizes, picks, duplicate
