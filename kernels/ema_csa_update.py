"""Per-codeword state update of one training step: EMA (paper Eq. 5), CSA cascade (Eq. 6-7),
dead-code counters (docs/method.md §4.6 steps 1-2). In place on the quantizer's buffers.

With n [M, K] the step's counts and H [M, K, D] its DTA sums (see dta_accumulate):

    C <- decay * C + (1 - decay) * n
    C <- (C + eps) / (sum_k C + K * eps) * sum_k C        (Laplace smoothing, authors' code only)
    W <- decay * W + (1 - decay) * H
    E <- W / C                (smoothed)     or     E <- W / (C + eps)     (paper Eq. 5)

CSA, for the cascade order (o_1, ..., o_M), replaces each codeword in turn by the mean of the
current codewords at the same index, so later modalities see the already-moved ones:

    E[o_j, k] <- 1/M * sum_m E[m, k]       for j = 1..M
    (T->A->V: t1 = (v+a+t)/3, a1 = (v+a+t1)/3, v1 = (v+a1+t1)/3)

In the authors' code CSA moves only the lookup codebook E, never W or C, so it is re-derived from
W and C every step (`csa_persistent=False`); with `csa_persistent=True` W is rewritten so that the
moved codewords are what the EMA continues from, as the paper's text implies.

Count floor (`count_floor` > 0; a deviation from the authors' code, off by default; Triton too):
a codeword whose EMA count C' falls below the floor after the EMA is held at its previous pre-CSA
value A instead of being divided by ~eps (the authors' first-step explosion of unchosen codes):

    A = W_old / C_old   where C_old >= count_floor,   else the lookup codeword E before the step
    where C' < count_floor:   C' <- count_floor,   W' <- A * count_floor   (so W' / C' = A)

This step's (small) contribution to such a code is dropped; once a code is chosen often enough
for C' to reach the floor, it follows the ordinary EMA from A.

Dead-code counters U [K] (shared by all modalities): U <- U + 1, U[k] <- 0 for every code any
modality chose; dead = U > dead_after (their U <- 0); active = 0 <= U < active_window, not dead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EmaCsaConfig:
    """What one codebook update does, shared by `ema_csa_update` (dispatch.py), its reference here and
    its Triton kernel: the EMA's `decay` and `eps`, Laplace smoothing or E = W / (C + eps), the CSA
    cascade order (modality indices, applied in turn; empty: no CSA) and whether the moved codewords
    persist into W, the dead-code thresholds, and the count floor (0: off)."""

    decay: float
    eps: float
    laplace_smoothing: bool
    csa_order: tuple[int, ...]
    csa_persistent: bool
    dead_after: int
    active_window: int
    count_floor: float = 0.0

    def __post_init__(self) -> None:
        order = tuple(int(m) for m in (self.csa_order or ()))
        if any(m < 0 for m in order):
            raise ValueError(f"EmaCsaConfig: csa_order must hold modality indices >= 0, got {order}")
        if not self.count_floor >= 0:
            raise ValueError(f"EmaCsaConfig: count_floor must be >= 0, got {self.count_floor}")
        object.__setattr__(self, "csa_order", order)  # any sequence (or None) in, a hashable tuple kept


def ema_denominator(ema_count: torch.Tensor, eps: float, laplace_smoothing: bool) -> torch.Tensor:
    """What W is divided by to give E: the smoothed counts themselves, or C + eps."""
    return ema_count if laplace_smoothing else ema_count + eps


def csa_cascade_(codebook: torch.Tensor, order: Sequence[int]) -> None:
    """Cascade of equal-weight means over modalities, in place on E [M, K, D]."""
    for m in order:
        codebook[m] = codebook.mean(dim=0)


def ema_csa_update_reference(
    codebook: torch.Tensor,
    ema_sum: torch.Tensor,
    ema_count: torch.Tensor,
    unused_steps: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    config: EmaCsaConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update E [M,K,D], W [M,K,D], C [M,K], U [K] in place; return the (dead, active) masks [K]."""
    num_codes = ema_count.shape[1]
    decay, eps, laplace_smoothing, count_floor = config.decay, config.eps, config.laplace_smoothing, config.count_floor
    if count_floor > 0:  # the codeword a below-floor code is held at (module docstring)
        settled = (ema_count >= count_floor).unsqueeze(-1)
        old_denom = ema_denominator(ema_count, eps, laplace_smoothing).clamp(min=count_floor).unsqueeze(-1)
        anchor = torch.where(settled, ema_sum / old_denom, codebook)
    ema_count.copy_(decay * ema_count + (1 - decay) * counts)
    if laplace_smoothing:
        total = ema_count.sum(dim=1, keepdim=True)
        ema_count.copy_((ema_count + eps) / (total + num_codes * eps) * total)
    ema_sum.mul_(decay).add_((1 - decay) * sums)  # = decay * W + (1 - decay) * H, without a [M, K, D] temporary
    if count_floor > 0:
        low = ema_count < count_floor
        ema_count.masked_fill_(low, count_floor)
        floor_denom = ema_denominator(ema_count, eps, laplace_smoothing).unsqueeze(-1)
        ema_sum.copy_(torch.where(low.unsqueeze(-1), anchor * floor_denom, ema_sum))
    denom = ema_denominator(ema_count, eps, laplace_smoothing).unsqueeze(-1)
    torch.div(ema_sum, denom, out=codebook)
    if config.csa_order:
        csa_cascade_(codebook, config.csa_order)
        if config.csa_persistent:
            torch.mul(codebook, denom, out=ema_sum)

    selected = counts.sum(dim=0) > 0
    unused_steps.add_(1).masked_fill_(selected, 0)
    dead = unused_steps > config.dead_after
    active = (unused_steps >= 0) & (unused_steps < config.active_window) & ~dead
    unused_steps.masked_fill_(dead, 0)
    return dead, active
