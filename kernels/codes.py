"""Codewords at chosen indices: a modality's own code, and the codes of every modality at an index.

Shapes: codebook [M, K, D], idx [M, N] (the code each modality chose per frame).
"""

from __future__ import annotations

import torch


def own_codes(codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[M, N, D]: E_m[k_m], each modality's codeword at its own index."""
    return codebook.gather(1, idx.unsqueeze(-1).expand(-1, -1, codebook.shape[-1]))


def codes_at_indices(codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[P, M, N, D]: E_p[k_m], partner p's codeword at the index modality m chose (p = m included)."""
    num_mod, num_frames = idx.shape
    return codebook[:, idx.reshape(-1)].view(codebook.shape[0], num_mod, num_frames, codebook.shape[-1])
