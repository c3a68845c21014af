"""Quantizer health metrics (no gradient): perplexity, index agreement, per-clip mode agreement,
and the authors' codebook-alignment metric (`segment_loss`, docs/method.md §4.9)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(-sum_k p_k log(p_k + 1e-10)) per modality, p = counts / frames; counts [M, K] -> [M]."""
    probs = counts / counts.sum(dim=-1, keepdim=True)
    return torch.exp(-(probs * torch.log(probs + 1e-10)).sum(dim=-1))


def index_agreement(idx: torch.Tensor) -> torch.Tensor:
    """Fraction of frames on which modalities m and p chose the same index; idx [M, N] -> [M, M]."""
    return (idx.unsqueeze(1) == idx.unsqueeze(0)).float().mean(dim=-1)


def temporal_modes(idx: torch.Tensor) -> torch.Tensor:
    """Most frequent code of each clip, smallest code on a tie (torch.mode on CPU); [..., T] -> [...]."""
    ordered = idx.sort(dim=-1).values
    frequency = (ordered.unsqueeze(-1) == ordered.unsqueeze(-2)).sum(dim=-1)  # [..., T]
    # argmax returns the first maximum; in sorted order that is the smallest most-frequent code
    return ordered.gather(-1, frequency.argmax(dim=-1, keepdim=True)).squeeze(-1)


def mode_agreement_count(idx: torch.Tensor) -> torch.Tensor:
    """Authors' `equal_num`: clips whose temporal modes agree across all modalities; idx [M, B, T]."""
    modes = temporal_modes(idx)
    return (modes == modes[:1]).all(dim=0).sum()


def codebook_alignment(codebook: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Authors' `segment_loss` metric: 0.5 * mean over modality pairs of the InfoNCE between the
    L2-normalised codebooks, same index as the positive; codebook [M, K, D] -> scalar."""
    normed = F.normalize(codebook, dim=-1)
    targets = torch.arange(codebook.shape[1], device=codebook.device)
    pair_losses = [
        F.cross_entropy(normed[x] @ normed[y].T / temperature, targets)
        for x, y in itertools.combinations(range(codebook.shape[0]), 2)
    ]
    if not pair_losses:  # a single modality has nothing to align with
        return codebook.new_zeros(())
    return 0.5 * torch.stack(pair_losses).mean()
