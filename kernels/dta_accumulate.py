"""DTA accumulation (paper Eq. 4): the per-codeword sums that feed the EMA update.

For modality m and code k, over the frames n that chose k in m (idx[m, n] == k):

    H[m, k] = self_weight * sum_n z[m, n] + cross_weight * sum_n sum_{p != m} z[p, n]
    n[m, k] = number of such frames

The partners' latents are taken at the same frame n whatever codes they chose. With
self_weight=1, cross_weight=0 this is the plain EMA k-means accumulation.

Shapes: z [M, N, D], idx [M, N] -> sums [M, K, D], counts [M, K]. No [N, K] one-hot: one index_add
over the flattened (m, k) rows for the sums, one for the counts. (Not bincount: on a GPU it reads
the largest index back to the host to size its output, a synchronisation.)
"""

from __future__ import annotations

import torch


def dta_mixed_latents(z: torch.Tensor, self_weight: float, cross_weight: float) -> torch.Tensor:
    """[M, N, D]: what frame n contributes to modality m's chosen code."""
    # self*z_m + cross*sum_{p != m} z_p = (self - cross)*z_m + cross*sum_p z_p
    if cross_weight == 0:
        return self_weight * z
    # summed in place into the fresh product: the same two roundings and sum, one [M, N, D] buffer
    return ((self_weight - cross_weight) * z).add_(cross_weight * z.sum(dim=0, keepdim=True))


def flat_rows(idx: torch.Tensor, num_codes: int) -> torch.Tensor:
    """idx [M, N] -> [M*N]: the row m*K + idx[m, n] of a per-modality table flattened to [M*K, ...]."""
    return (idx + num_codes * torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)).reshape(-1)


def code_counts(idx: torch.Tensor, num_codes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """How many frames chose each code, per modality: idx [M, N] -> [M, K] (one index_add, no host sync)."""
    num_mod = idx.shape[0]
    rows = flat_rows(idx, num_codes)
    counts = torch.zeros(num_mod * num_codes, dtype=torch.long, device=idx.device)  # exact, then cast
    return counts.index_add_(0, rows, torch.ones_like(rows)).to(dtype).view(num_mod, num_codes)


def dta_accumulate_reference(
    z: torch.Tensor, idx: torch.Tensor, num_codes: int, self_weight: float, cross_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    num_mod, num_frames, dim = z.shape
    mixed = dta_mixed_latents(z, self_weight, cross_weight)
    rows = flat_rows(idx, num_codes)
    sums = torch.zeros(num_mod * num_codes, dim, dtype=z.dtype, device=z.device)
    sums.index_add_(0, rows, mixed.reshape(-1, dim))
    return sums.view(num_mod, num_codes, dim), code_counts(idx, num_codes, z.dtype)
