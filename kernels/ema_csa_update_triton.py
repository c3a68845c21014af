"""One training step's per-codeword state update in Triton, in place, for any number of modalities M:
EMA, count floor, E = W / C, CSA cascade, dead-code counters. The math and its eager reference:
`ema_csa_update.py` (`ema_csa_update_reference`, `EmaCsaConfig`).

Two launches, no host synchronisation (CUDA-graph capturable):

1. `_ema_count_kernel`, one program per modality: the count EMA and, with Laplace smoothing, the
   total sum_k C over all K codes (a reduction across every codeword block, which is why it is its
   own tiny pass). It writes the final C; it recomputes the EMA in a second loop instead of
   re-reading its own stores, so no intra-program barrier is needed. With a count floor it also
   keeps the step's starting counts and the below-floor mask for the second launch.
2. `_ema_csa_update_kernel`, grid (K blocks, D blocks): a program owns BLOCK_K codes x BLOCK_D dims
   of all M modalities at once (the cascade mixes modalities) as one [M_PAD, BLOCK_K, BLOCK_D]
   tile, M_PAD = M rounded up to a power of two (the padding rows are masked, zero, and never
   stored). It runs the sum EMA, the floor, the division, the cascade and the optional
   persistence in registers; the D-block-0 programs update the dead-code counters and write the
   (dead, active) masks. The cascade order is data (an int32 tensor on the device, one step per
   loop iteration), not a specialisation: one compiled kernel per M serves every order.

Layout: every tensor must be contiguous. The state (E, W, C, U) is updated in place, so it must be
the caller's own buffers, not copies; and the kernel addresses E, W and the step's sums H with one
flat int64 offset tile [M_PAD, BLOCK_K, BLOCK_D] (C and n with one row tile), where strided sums
would need a second one live beside it, in a kernel whose tiles are sized to stay in registers
(`blocks`). The sums and counts production passes are dta_accumulate's outputs, contiguous.

Precision: the state is float32 or float64 (all the same dtype); the step's sums/counts are read in
their own dtype and converted to the state's. decay, eps, K*eps and the floor are compile-time
constants (one compilation per configuration) so that they are materialised in the state's
precision, exactly like the reference's Python-float scalars; float64 therefore matches the
reference to ~1e-15 relative (only the order of the sums over K and over modalities differ).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .ema_csa_update import EmaCsaConfig
from .utilities import check_tensor, launch, launch_device, require

__all__ = ["ema_csa_update_triton"]

_STATE_DTYPES = (torch.float32, torch.float64)
_STEP_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _denominator(c, EPS: tl.constexpr, LAPLACE: tl.constexpr):
    """What W is divided by to give E (ema_csa_update.ema_denominator)."""
    if LAPLACE:
        return c
    else:
        return c + tl.full((), EPS, c.dtype)


@triton.jit
def _ema_count_kernel(
    count_ptr, step_counts_ptr, old_count_ptr, low_ptr, K,
    DECAY: tl.constexpr, ONE_MINUS_DECAY: tl.constexpr, EPS: tl.constexpr, K_EPS: tl.constexpr,
    LAPLACE: tl.constexpr, FLOOR: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[m] <- decay*C[m] + (1-decay)*n[m], Laplace smoothing over all K codes of modality m, floor."""
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
        c_old = tl.load(count_ptr + base + offs, mask=mask, other=0.0)
        n = tl.load(step_counts_ptr + base + offs, mask=mask, other=0.0).to(dt)
        c = decay * c_old + one_minus_decay * n  # same expression as the first loop: same bits
        if LAPLACE:
            c = (c + tl.full((), EPS, dt)) / scale_den * total
        if FLOOR > 0:
            floor = tl.full((), FLOOR, dt)
            low = c < floor
            c = tl.where(low, floor, c)
            tl.store(old_count_ptr + base + offs, c_old, mask=mask)
            tl.store(low_ptr + base + offs, low.to(tl.uint8), mask=mask)
        tl.store(count_ptr + base + offs, c, mask=mask)


@triton.jit
def _ema_csa_update_kernel(
    codebook_ptr, ema_sum_ptr, count_ptr, old_count_ptr, low_ptr, unused_ptr, sums_ptr, step_counts_ptr,
    order_ptr, dead_ptr, active_ptr,
    K, D, num_csa, dead_after, active_window,
    DECAY: tl.constexpr, ONE_MINUS_DECAY: tl.constexpr, EPS: tl.constexpr, LAPLACE: tl.constexpr,
    FLOOR: tl.constexpr, M: tl.constexpr, M_PAD: tl.constexpr, PERSIST: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    dt = ema_sum_ptr.dtype.element_ty
    decay = tl.full((), DECAY, dt)
    one_minus_decay = tl.full((), ONE_MINUS_DECAY, dt)

    offs_m = tl.arange(0, M_PAD)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rows_ok = (offs_m < M)[:, None] & (offs_k < K)[None, :]  # [M_PAD, BLOCK_K]
    mask = rows_ok[:, :, None] & (offs_d < D)[None, None, :]
    rows = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]  # flat (m, k) row of the [M*K, D] state
    tile = rows[:, :, None] * D + offs_d[None, None, :]  # int64 element offsets [M_PAD, BLOCK_K, BLOCK_D]

    # other=0 for W and H: padded modalities/codes/dims are zero here and never stored.
    w_old = tl.load(ema_sum_ptr + tile, mask=mask, other=0.0)
    h = tl.load(sums_ptr + tile, mask=mask, other=0.0).to(dt)
    w = decay * w_old + one_minus_decay * h
    # other=1: padded rows divide 0 by 1 (E stays 0, so they add nothing to the CSA means).
    denom = _denominator(tl.load(count_ptr + rows, mask=rows_ok, other=1.0), EPS, LAPLACE)
    if FLOOR > 0:
        # A code whose new count fell below the floor is held at its previous codeword A.
        floor = tl.full((), FLOOR, dt)
        c_old = tl.load(old_count_ptr + rows, mask=rows_ok, other=1.0)
        old_denom = tl.maximum(_denominator(c_old, EPS, LAPLACE), floor)
        e_old = tl.load(codebook_ptr + tile, mask=mask, other=0.0)  # this program's own tile: no race
        anchor = tl.where((c_old >= floor)[:, :, None], w_old / old_denom[:, :, None], e_old)
        low = tl.load(low_ptr + rows, mask=rows_ok, other=0) != 0
        w = tl.where(low[:, :, None], anchor * denom[:, :, None], w)
    if not PERSIST:
        tl.store(ema_sum_ptr + tile, w, mask=mask)
    e = w / denom[:, :, None]

    # CSA cascade: step j replaces modality order[j] by the mean of the current codewords
    # (the padded rows are exact zeros, so the sum over M_PAD rows is the sum over M).
    for j in range(num_csa):
        target = tl.load(order_ptr + j)
        mean = tl.sum(e, axis=0) / M
        e = tl.where((offs_m == target)[:, None, None], mean[None, :, :], e)

    tl.store(codebook_ptr + tile, e, mask=mask)
    if PERSIST:
        # W <- E * denominator: the EMA continues from the moved codewords.
        tl.store(ema_sum_ptr + tile, e * denom[:, :, None], mask=mask)

    if pid_d == 0:
        # Dead-code counters, shared by all modalities: one writer per code.
        # other=0: padded modalities/codes count as unselected (never stored).
        n_sum = tl.sum(tl.load(step_counts_ptr + rows, mask=rows_ok, other=0.0), axis=0)
        code_ok = offs_k < K
        u = tl.load(unused_ptr + offs_k, mask=code_ok, other=0)
        u = tl.where(n_sum > 0, 0, u + 1)
        dead = u > dead_after
        active = (u >= 0) & (u < active_window) & (~dead)
        u = tl.where(dead, 0, u)
        tl.store(unused_ptr + offs_k, u, mask=code_ok)
        tl.store(dead_ptr + offs_k, dead.to(tl.uint8), mask=code_ok)
        tl.store(active_ptr + offs_k, active.to(tl.uint8), mask=code_ok)


@functools.lru_cache(maxsize=64)
def _order_tensor(order: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The cascade order on the device, made once per (order, device): no host-to-device copy per
    step, so a CUDA graph can capture the update."""
    return torch.tensor(order or (0,), dtype=torch.int32, device=device)


def blocks(num_mod: int, dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(M_PAD, BLOCK_K, BLOCK_D): a [M_PAD, BLOCK_K, BLOCK_D] tile of 4096 fp32 or 2048 fp64 elements
    over 8 warps keeps the few live copies of it in registers (profiles/compiled.md: no spills)."""
    m_pad = triton.next_power_of_2(num_mod)
    budget = 4096 if dtype == torch.float32 else 2048
    block_d = min(64, triton.next_power_of_2(dim), max(1, budget // m_pad))
    block_k = max(1, min(128, budget // (m_pad * block_d)))
    return m_pad, block_k, block_d


def ema_csa_update_triton(
    codebook: torch.Tensor,
    ema_sum: torch.Tensor,
    ema_count: torch.Tensor,
    unused_steps: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    config: EmaCsaConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update E [M,K,D], W [M,K,D], C [M,K], U [K] in place; return the (dead, active) masks [K].
    All contiguous (module docstring)."""
    where = "ema_csa_update_triton"
    require(codebook.dim() == 3, where, f"codebook must be [M, K, D], got shape {tuple(codebook.shape)}")
    num_mod, num_codes, dim = codebook.shape
    require(num_mod >= 1 and num_codes >= 1 and dim >= 1, where,
            f"need M, K, D >= 1, got M={num_mod}, K={num_codes}, D={dim}")
    check_tensor(codebook, where, "codebook", dtypes=_STATE_DTYPES, contiguous=True)
    state = codebook.dtype
    check_tensor(ema_sum, where, "ema_sum", shape=codebook.shape, dtypes=(state,), contiguous=True)
    check_tensor(ema_count, where, "ema_count", shape=(num_mod, num_codes), dtypes=(state,), contiguous=True)
    check_tensor(sums, where, "sums", shape=codebook.shape, dtypes=_STEP_DTYPES, contiguous=True)
    check_tensor(counts, where, "counts", shape=(num_mod, num_codes), dtypes=_STEP_DTYPES, contiguous=True)
    check_tensor(unused_steps, where, "unused_steps", shape=(num_codes,), dtypes=(torch.int64,), contiguous=True)
    order = config.csa_order
    require(all(o < num_mod for o in order), where,
            f"csa_order entries must be modality indices in [0, {num_mod}), got {order}")

    floor = float(config.count_floor)
    constants = dict(DECAY=float(config.decay), ONE_MINUS_DECAY=1.0 - float(config.decay), EPS=float(config.eps),
                     LAPLACE=bool(config.laplace_smoothing), FLOOR=floor)
    with launch_device(where, codebook=codebook, ema_sum=ema_sum, ema_count=ema_count, unused_steps=unused_steps,
                       sums=sums, counts=counts) as device:
        dead = torch.empty(num_codes, dtype=torch.bool, device=device)
        active = torch.empty(num_codes, dtype=torch.bool, device=device)
        if floor > 0:  # the step's starting counts and the below-floor mask, for the second launch
            old_count = torch.empty_like(ema_count)
            low = torch.empty((num_mod, num_codes), dtype=torch.uint8, device=device)
        else:  # never read: any valid pointer
            old_count, low = ema_count, dead.view(torch.uint8)

        launch(_ema_count_kernel, (num_mod,), ema_count, counts, old_count, low, num_codes,
               K_EPS=num_codes * float(config.eps), BLOCK_K=1024, num_warps=4, **constants)
        m_pad, block_k, block_d = blocks(num_mod, dim, state)
        grid = (triton.cdiv(num_codes, block_k), triton.cdiv(dim, block_d))
        launch(
            _ema_csa_update_kernel, grid,
            codebook, ema_sum, ema_count, old_count, low, unused_steps, sums, counts, _order_tensor(order, device),
            dead.view(torch.uint8), active.view(torch.uint8),  # bool masks written as 0/1 bytes
            num_codes, dim, len(order), int(config.dead_after), int(config.active_window),
            M=num_mod, M_PAD=m_pad, PERSIST=bool(config.csa_persistent) and len(order) > 0,
            BLOCK_K=block_k, BLOCK_D=block_d, num_warps=8, **constants,
        )
    return dead, active
