"""Per-codeword state update of one training step in Triton: EMA (paper Eq. 5), CSA cascade
(Eq. 6-7), dead-code counters (spec §3.7 step 1-2). In place, like `ema_csa_update_reference`.

With n [M, K] the step's counts and H [M, K, D] its DTA sums:

    C <- decay * C + (1 - decay) * n
    C <- (C + eps) / (sum_k C + K * eps) * sum_k C        (Laplace smoothing)
    W <- decay * W + (1 - decay) * H
    E <- W / C                (smoothed)     or     E <- W / (C + eps)
    E[o_j, k] <- 1/M * sum_m E[m, k]   for j = 1..len(order)   (CSA cascade, sequential)
    W <- E * denominator                                      (csa_persistent, only with a cascade)
    U <- U + 1;  U[k] <- 0 where sum_m n[m, k] > 0
    dead = U > dead_after (then U[dead] <- 0);  active = 0 <= U < active_window and not dead

Two launches, no host synchronisation (CUDA-graph capturable):

1. `_ema_count_kernel`, one program per modality: the count EMA and, with Laplace smoothing, the
   total sum_k C over all K codes (a reduction across every codeword block, which is why it is its
   own tiny pass). It writes the final C; it recomputes the EMA in a second loop instead of
   re-reading its own stores, so no intra-program barrier is needed.
2. `_ema_csa_update_kernel`, grid (K blocks, D blocks): a program owns BLOCK_K codes x BLOCK_D dims
   for all M modalities at once (the cascade mixes modalities), keeps the M codeword tiles in
   registers, runs the sum EMA, the division, the cascade and the optional persistence, and the
   D-block-0 programs update the dead-code counters and write the (dead, active) masks.

State (E, W, C) is float32 or float64 (all the same dtype). The step's sums/counts are read in
their own dtype and converted to the state's. decay, eps and K*eps are compile-time constants
(one compilation per configuration) so that they are materialised in the state's precision,
exactly like the reference's Python-float scalars; float64 therefore matches the reference to
~1e-15 relative (only the order of the sum over K differs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

_STATE_DTYPES = (torch.float32, torch.float64)
_MAX_CSA_STEPS = 6


@triton.jit
def _ema_count_kernel(
    count_ptr, step_counts_ptr, K,
    DECAY: tl.constexpr, ONE_MINUS_DECAY: tl.constexpr, EPS: tl.constexpr, K_EPS: tl.constexpr,
    LAPLACE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[m] <- decay*C[m] + (1-decay)*n[m], then Laplace smoothing over all K codes of modality m."""
    m = tl.program_id(0)
    dt = count_ptr.dtype.element_ty
    decay = tl.full((), DECAY, dt)
    one_minus_decay = tl.full((), ONE_MINUS_DECAY, dt)
    base = m.to(tl.int64) * K
    if LAPLACE:
        partial = tl.zeros((BLOCK_K,), dtype=dt)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            mask = offs < K
            # other=0: padded lanes add nothing to the total.
            c = tl.load(count_ptr + base + offs, mask=mask, other=0.0)
            n = tl.load(step_counts_ptr + base + offs, mask=mask, other=0.0).to(dt)
            partial += decay * c + one_minus_decay * n
        total = tl.sum(partial, axis=0)
        scale_den = total + tl.full((), K_EPS, dt)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        mask = offs < K
        c = tl.load(count_ptr + base + offs, mask=mask, other=0.0)
        n = tl.load(step_counts_ptr + base + offs, mask=mask, other=0.0).to(dt)
        c = decay * c + one_minus_decay * n  # same expression as the first loop: same bits
        if LAPLACE:
            c = (c + tl.full((), EPS, dt)) / scale_den * total
        tl.store(count_ptr + base + offs, c, mask=mask)


@triton.jit
def _csa_step(e0, e1, e2, TARGET: tl.constexpr, M: tl.constexpr):
    """E[TARGET] <- mean over modalities of the current E (sum in modality order, then / M)."""
    mean = e0
    if M >= 2:
        mean = mean + e1
    if M >= 3:
        mean = mean + e2
    mean = mean / M
    if TARGET == 0:
        e0 = mean
    if TARGET == 1:
        e1 = mean
    if TARGET == 2:
        e2 = mean
    return e0, e1, e2


@triton.jit
def _ema_tile(ema_sum_ptr, sums_ptr, count_ptr, m, offs_k, tile_off, mask_k, mask,
              K, decay, one_minus_decay, EPS: tl.constexpr, LAPLACE: tl.constexpr, PERSIST: tl.constexpr):
    """Modality m's tile: W <- decay*W + (1-decay)*H (stored now unless it is rewritten after the
    cascade, which keeps only the E tiles alive in registers), its denominator and E = W / denom."""
    dt = ema_sum_ptr.dtype.element_ty
    # other=0 for W and H: padded lanes are never stored.
    w = tl.load(ema_sum_ptr + tile_off, mask=mask, other=0.0)
    h = tl.load(sums_ptr + tile_off, mask=mask, other=0.0).to(dt)
    w = decay * w + one_minus_decay * h
    if not PERSIST:
        tl.store(ema_sum_ptr + tile_off, w, mask=mask)
    # other=1: padded codes divide by 1 instead of producing 0/0 (never stored either way).
    c = tl.load(count_ptr + m * K + offs_k, mask=mask_k, other=1.0)
    if LAPLACE:
        denom = c
    else:
        denom = c + tl.full((), EPS, dt)
    e = w / denom[:, None]
    return e, denom


@triton.jit
def _ema_csa_update_kernel(
    codebook_ptr, ema_sum_ptr, count_ptr, unused_ptr, sums_ptr, step_counts_ptr, dead_ptr, active_ptr,
    K, D, plane, dead_after, active_window,
    DECAY: tl.constexpr, ONE_MINUS_DECAY: tl.constexpr, EPS: tl.constexpr, LAPLACE: tl.constexpr,
    M: tl.constexpr, NUM_CSA: tl.constexpr,
    O0: tl.constexpr, O1: tl.constexpr, O2: tl.constexpr, O3: tl.constexpr, O4: tl.constexpr, O5: tl.constexpr,
    PERSIST: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    dt = ema_sum_ptr.dtype.element_ty
    decay = tl.full((), DECAY, dt)
    one_minus_decay = tl.full((), ONE_MINUS_DECAY, dt)

    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_k = offs_k < K
    mask = mask_k[:, None] & (offs_d < D)[None, :]
    # int64 element offsets of the tile in modality 0; modality m adds m * plane (plane = K*D)
    tile_off = offs_k.to(tl.int64)[:, None] * D + offs_d[None, :]

    e0, d0 = _ema_tile(ema_sum_ptr, sums_ptr, count_ptr, 0, offs_k, tile_off, mask_k, mask,
                       K, decay, one_minus_decay, EPS, LAPLACE, PERSIST)
    # Placeholders for absent modalities (never stored, never part of a mean).
    e1, d1 = e0, d0
    e2, d2 = e0, d0
    if M >= 2:
        e1, d1 = _ema_tile(ema_sum_ptr, sums_ptr, count_ptr, 1, offs_k, tile_off + plane, mask_k, mask,
                           K, decay, one_minus_decay, EPS, LAPLACE, PERSIST)
    if M >= 3:
        e2, d2 = _ema_tile(ema_sum_ptr, sums_ptr, count_ptr, 2, offs_k, tile_off + 2 * plane, mask_k, mask,
                           K, decay, one_minus_decay, EPS, LAPLACE, PERSIST)

    # CSA cascade, unrolled at compile time from the order (O_j are modality indices).
    if NUM_CSA > 0:
        e0, e1, e2 = _csa_step(e0, e1, e2, O0, M)
    if NUM_CSA > 1:
        e0, e1, e2 = _csa_step(e0, e1, e2, O1, M)
    if NUM_CSA > 2:
        e0, e1, e2 = _csa_step(e0, e1, e2, O2, M)
    if NUM_CSA > 3:
        e0, e1, e2 = _csa_step(e0, e1, e2, O3, M)
    if NUM_CSA > 4:
        e0, e1, e2 = _csa_step(e0, e1, e2, O4, M)
    if NUM_CSA > 5:
        e0, e1, e2 = _csa_step(e0, e1, e2, O5, M)

    tl.store(codebook_ptr + tile_off, e0, mask=mask)
    if PERSIST:
        # W <- E * denominator: the EMA continues from the moved codewords.
        tl.store(ema_sum_ptr + tile_off, e0 * d0[:, None], mask=mask)
    if M >= 2:
        tl.store(codebook_ptr + tile_off + plane, e1, mask=mask)
        if PERSIST:
            tl.store(ema_sum_ptr + tile_off + plane, e1 * d1[:, None], mask=mask)
    if M >= 3:
        tl.store(codebook_ptr + tile_off + 2 * plane, e2, mask=mask)
        if PERSIST:
            tl.store(ema_sum_ptr + tile_off + 2 * plane, e2 * d2[:, None], mask=mask)

    if pid_d == 0:
        # Dead-code counters, shared by all modalities: one writer per code.
        # other=0: padded codes count as unselected (never stored).
        n_sum = tl.load(step_counts_ptr + offs_k, mask=mask_k, other=0.0)
        for m in tl.static_range(1, M):
            n_sum += tl.load(step_counts_ptr + m * K + offs_k, mask=mask_k, other=0.0)
        u = tl.load(unused_ptr + offs_k, mask=mask_k, other=0)
        u = tl.where(n_sum > 0, 0, u + 1)
        dead = u > dead_after
        active = (u >= 0) & (u < active_window) & (~dead)
        u = tl.where(dead, 0, u)
        tl.store(unused_ptr + offs_k, u, mask=mask_k)
        tl.store(dead_ptr + offs_k, dead.to(tl.uint8), mask=mask_k)
        tl.store(active_ptr + offs_k, active.to(tl.uint8), mask=mask_k)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(f"ema_csa_update_triton: {message}")


def ema_csa_update_triton(
    codebook: torch.Tensor,
    ema_sum: torch.Tensor,
    ema_count: torch.Tensor,
    unused_steps: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    *,
    decay: float,
    eps: float,
    laplace_smoothing: bool,
    csa_order: Sequence[int] | None,
    csa_persistent: bool,
    dead_after: int,
    active_window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update E [M,K,D], W [M,K,D], C [M,K], U [K] in place; return the (dead, active) masks [K]."""
    _require(codebook.dim() == 3, f"codebook must be [M, K, D], got shape {tuple(codebook.shape)}")
    num_mod, num_codes, dim = codebook.shape
    _require(1 <= num_mod <= 3, f"supports M in {{1, 2, 3}} modalities, got M={num_mod}")
    _require(num_codes >= 1 and dim >= 1, f"need K, D >= 1, got K={num_codes}, D={dim}")
    if codebook.dtype not in _STATE_DTYPES:
        raise TypeError(f"ema_csa_update_triton: state must be float32 or float64, got {codebook.dtype}")
    for name, t, shape in (
        ("ema_sum", ema_sum, (num_mod, num_codes, dim)),
        ("ema_count", ema_count, (num_mod, num_codes)),
    ):
        _require(tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != codebook.dtype:
            raise TypeError(
                f"ema_csa_update_triton: {name} must have the codebook's dtype {codebook.dtype}, got {t.dtype}"
            )
    for name, t, shape in (("sums", sums, (num_mod, num_codes, dim)), ("counts", counts, (num_mod, num_codes))):
        _require(tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("sums", sums), ("counts", counts)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"ema_csa_update_triton: {name} must be a floating tensor, got {t.dtype}")
    _require(tuple(unused_steps.shape) == (num_codes,),
             f"unused_steps must have shape {(num_codes,)}, got {tuple(unused_steps.shape)}")
    if unused_steps.dtype != torch.int64:
        raise TypeError(f"ema_csa_update_triton: unused_steps must be int64, got {unused_steps.dtype}")
    for name, t in (("codebook", codebook), ("ema_sum", ema_sum), ("ema_count", ema_count),
                    ("unused_steps", unused_steps), ("sums", sums), ("counts", counts)):
        _require(t.device == codebook.device, f"{name} is on {t.device}, codebook on {codebook.device}")
        # The kernels address rows as m*K*D + k*D + d, and update the state in place.
        _require(t.is_contiguous(), f"{name} must be contiguous")
    order = tuple(int(o) for o in (csa_order or ()))
    _require(len(order) <= _MAX_CSA_STEPS, f"csa_order may have at most {_MAX_CSA_STEPS} steps, got {order}")
    _require(all(0 <= o < num_mod for o in order),
             f"csa_order entries must be modality indices in [0, {num_mod}), got {order}")
    padded = order + (-1,) * (_MAX_CSA_STEPS - len(order))

    decay = float(decay)
    eps = float(eps)
    laplace = bool(laplace_smoothing)
    dead = torch.empty(num_codes, dtype=torch.bool, device=codebook.device)
    active = torch.empty(num_codes, dtype=torch.bool, device=codebook.device)

    _ema_count_kernel[(num_mod,)](
        ema_count, counts, num_codes,
        DECAY=decay, ONE_MINUS_DECAY=1.0 - decay, EPS=eps, K_EPS=num_codes * eps,
        LAPLACE=laplace, BLOCK_K=1024, num_warps=4,
    )
    # 2048-element tiles over 8 warps: M tiles of E stay in registers without spilling on sm_90
    # (~134 registers in fp32, ~173 in fp64 for M = 3).
    block_d = min(64, triton.next_power_of_2(dim))
    block_k = min(128, 2048 // block_d)
    grid = (triton.cdiv(num_codes, block_k), triton.cdiv(dim, block_d))
    _ema_csa_update_kernel[grid](
        codebook, ema_sum, ema_count, unused_steps, sums, counts,
        dead.view(torch.uint8), active.view(torch.uint8),  # bool masks written as 0/1 bytes
        num_codes, dim, num_codes * dim, int(dead_after), int(active_window),
        DECAY=decay, ONE_MINUS_DECAY=1.0 - decay, EPS=eps, LAPLACE=laplace,
        M=num_mod, NUM_CSA=len(order),
        O0=padded[0], O1=padded[1], O2=padded[2], O3=padded[3], O4=padded[4], O5=padded[5],
        PERSIST=bool(csa_persistent) and len(order) > 0,
        BLOCK_K=block_k, BLOCK_D=block_d, num_warps=8,
    )
    return dead, active
