"""Quantizer losses: cross-modal commitment (paper Eq. 8) and DQA / CMCM (docs/method.md §4.7, §4.3)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .codes import codes_at_indices, own_codes

CROSS_TARGETS = ("partner_code", "same_index")
REDUCTIONS = ("mean", "sum")


def commitment_reference(
    z: torch.Tensor,
    codebook: torch.Tensor,
    idx: torch.Tensor,
    *,
    self_weight: float,
    cross_weight: float,
    cross_target: str,
    reduction: str,
    frames_per_sample: int,
) -> torch.Tensor:
    """Commitment loss per modality [M]; gradients reach z only (the codes are constants).

    L_m = self_weight * dist(z_m, E_m[k_m]) + cross_weight * sum_{p != m} dist(z_m, target_p), with
    target_p = E_p[k_p] (`partner_code`: the partner's own code at this frame, authors' code) or
    E_p[k_m] (`same_index`: the partner's codeword at m's index, paper Eq. 8).
    dist is the mean over frames and dims (`mean`, authors' code) or the squared norm summed over
    time and dims, averaged over samples (`sum`, paper Eq. 8).
    """
    if cross_target not in CROSS_TARGETS:
        raise ValueError(f"cross_target must be one of {CROSS_TARGETS}, got {cross_target!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    num_mod, num_frames, dim = z.shape
    codebook = codebook.detach()
    if cross_target == "partner_code":
        own = own_codes(codebook, idx)  # E_m[k_m], [M, N, D]
        targets = [[own[p] for p in range(num_mod)] for _ in range(num_mod)]  # [m][p] -> E_p[k_p]
    else:
        at_index = codes_at_indices(codebook, idx)  # [p, m] -> E_p[k_m]
        targets = [[at_index[p, m] for p in range(num_mod)] for m in range(num_mod)]
    # one fused squared error per (m, p) pair: no [M, M, N, D] temporaries
    per_target = torch.stack([
        torch.stack([F.mse_loss(z[m], targets[m][p], reduction=reduction) for p in range(num_mod)])
        for m in range(num_mod)
    ])
    if reduction == "sum":
        per_target = per_target / (num_frames // frames_per_sample)
    weights = torch.full((num_mod, num_mod), cross_weight, dtype=z.dtype, device=z.device)
    weights.fill_diagonal_(self_weight)
    return (weights * per_target).sum(dim=1)


def cmcm_pair_reference(
    usage_x: torch.Tensor, usage_y: torch.Tensor, log_eps: float = 1e-10, denom_eps: float = 1e-5
) -> torch.Tensor:
    """Cross-modal code matching for one pair of modalities, usage [B, K] each (docs/method.md §4.3).

    S[i, j] = sum_k P_x[i,k] log(P_y[j,k] + 1e-10) + sum_k P_y[i,k] log(P_x[j,k] + 1e-10)
    L = -1/B sum_i log(G[i,i] / (sum_j G[i,j] + denom_eps)),  G = exp(S + max(-S))
    computed as a log-sum-exp, which is exactly the authors' value without its overflow risk.
    """
    scores = usage_x @ torch.log(usage_y + log_eps).T + usage_y @ torch.log(usage_x + log_eps).T
    shifted = scores + torch.max(-scores)  # the authors' global shift (kept in the graph, as there)
    lse = torch.logsumexp(shifted, dim=1)
    log_denominator = lse + torch.log1p(denom_eps * torch.exp(-lse))  # log(sum_j G[i,j] + eps)
    return -(shifted.diagonal() - log_denominator).mean()


def cmcm_reference(usage: torch.Tensor) -> torch.Tensor:
    """Sum of the pair losses over all unordered modality pairs, usage [M, B, K] (unweighted)."""
    num_mod = usage.shape[0]
    total = usage.new_zeros(())
    for x, y in itertools.combinations(range(num_mod), 2):  # the pair loss is symmetric in (x, y)
        total = total + cmcm_pair_reference(usage[x], usage[y])
    return total
