"""DTA accumulation in Triton: the per-codeword sums that feed the EMA update. The math and its eager
reference: `dta_accumulate.py`. Each frame contributes one mixed latent x[m, n] = a z[m, n] + b s[n]
(a = self - cross, b = cross, s[n] = sum_p z[p, n]) to row m*K + idx[m, n] of the flattened [M*K, D]
sums; with cross_weight == 0 the partners are never read (x = self_weight * z).

Two paths, the same result up to fp32 summation order:

* atomic (default): one pass over frames. A program owns BLOCK_N frames x BLOCK_D dims, loads the M
  latents of those frames, forms x[m] in fp32 registers and scatters it with `tl.atomic_add` into
  sums[m*K + idx]; the D-block-0 programs scatter 1.0 into counts. The order of the float additions
  is the hardware's, so results may differ in the last bits run to run.
* deterministic: frames are sorted by (m, code) once with a stable `torch.sort` (equal codes keep
  frame order), segment bounds come from `torch.searchsorted`, and a segmented-sum kernel walks each
  block of BLOCK_C codes' contiguous frame range in a fixed order: bit-identical run to run (for a
  given device and configuration). A single very popular code is walked serially by one program per
  D-block, so this path is slower when code usage is very skewed.

Layout: z and idx are read through their strides with int64 offsets (views are not copied); sums
and counts are contiguous outputs (the scatter addresses their rows as m*K + code). Latents may be
fp32, fp16 or bf16; everything is accumulated in fp32 and the outputs are fp32. Counts are exact
integers in fp32 up to 2**24 frames per code. Indices outside [0, K) are ignored (never written out
of bounds) instead of raising: checking them would need a host sync. The launcher never synchronises
with the host (no .item(), no data-dependent branch), so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utilities import check_tensor, launch, launch_device, require

_LATENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _dta_accumulate_kernel(
    z_ptr, idx_ptr, sums_ptr, counts_ptr,
    N, K, D,
    stride_zm, stride_zn, stride_zd, stride_im, stride_in,
    a, b,
    M: tl.constexpr, HAS_CROSS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Atomic scatter: program (pid_n, pid_d) adds x[m, n, d] into sums[m*K + idx[m, n], d]."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    mask = mask_n[:, None] & mask_d[None, :]
    z_off = offs_n.to(tl.int64)[:, None] * stride_zn + offs_d.to(tl.int64)[None, :] * stride_zd

    if HAS_CROSS:
        # s[n] = sum_p z[p, n] in the reference's order ((z0 + z1) + z2); masked lanes are never
        # stored, other=0 just keeps them finite.
        total = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for p in tl.static_range(M):
            total += tl.load(z_ptr + p * stride_zm + z_off, mask=mask, other=0.0).to(tl.float32)

    for m in tl.static_range(M):
        # Reloading z[m] (L1/L2 hit) is cheaper in registers than keeping all M tiles alive.
        zm = tl.load(z_ptr + m * stride_zm + z_off, mask=mask, other=0.0).to(tl.float32)
        if HAS_CROSS:
            x = a * zm + b * total
        else:
            x = a * zm
        # other=-1: a masked frame maps to an invalid code and is dropped below.
        code = tl.load(idx_ptr + m * stride_im + offs_n.to(tl.int64) * stride_in, mask=mask_n, other=-1)
        valid = mask_n & (code >= 0) & (code < K)
        row = code.to(tl.int64) + m * K
        tl.atomic_add(sums_ptr + row[:, None] * D + offs_d[None, :], x,
                      mask=valid[:, None] & mask_d[None, :], sem="relaxed")
        if pid_d == 0:
            ones = tl.full((BLOCK_N,), 1.0, dtype=tl.float32)
            tl.atomic_add(counts_ptr + row, ones, mask=valid, sem="relaxed")


@triton.jit
def _dta_accumulate_sorted_kernel(
    z_ptr, sorted_rows_ptr, perm_ptr, bounds_ptr, sums_ptr, counts_ptr,
    N, K, D,
    stride_zm, stride_zn, stride_zd,
    a, b,
    M: tl.constexpr, HAS_CROSS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Segmented sum: program (m, code block, D block) walks its codes' sorted frames in order.

    sorted_rows[j] = m*K + code of the j-th (stably) sorted (modality, frame) pair, perm[j] = m*N + n
    its flat position; bounds[r] = first j with sorted_rows[j] >= r, so code k of modality m owns
    positions [bounds[m*K + k], bounds[m*K + k + 1]).
    """
    pid_mc = tl.program_id(0)
    pid_d = tl.program_id(1)
    num_cblocks = tl.cdiv(K, BLOCK_C)
    m = pid_mc // num_cblocks
    c0 = (pid_mc % num_cblocks) * BLOCK_C
    offs_c = c0 + tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    row0 = m * K + c0  # first row of the block (int32 is enough: M*K is small)

    lo = tl.load(bounds_ptr + row0)
    hi = tl.load(bounds_ptr + m * K + tl.minimum(c0 + BLOCK_C, K))

    acc = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_j = start + tl.arange(0, BLOCK_N)
        mask_j = offs_j < hi
        # other=-1: masked positions match no code of the block.
        code = tl.load(sorted_rows_ptr + offs_j, mask=mask_j, other=-1) - row0
        # other=0: masked positions are never dereferenced (the latent loads use the same mask).
        n = tl.load(perm_ptr + offs_j, mask=mask_j, other=0) - m * N
        z_off = n.to(tl.int64)[:, None] * stride_zn + offs_d.to(tl.int64)[None, :] * stride_zd
        mask = mask_j[:, None] & mask_d[None, :]
        zm = tl.load(z_ptr + m * stride_zm + z_off, mask=mask, other=0.0).to(tl.float32)
        if HAS_CROSS:
            total = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            for p in tl.static_range(M):
                total += tl.load(z_ptr + p * stride_zm + z_off, mask=mask, other=0.0).to(tl.float32)
            x = a * zm + b * total
        else:
            x = a * zm
        # Route each sorted frame to its code's row with a select (not a multiply, so an inf/nan
        # latent cannot leak into other codes); adding exact zeros keeps the fixed-order sum exact.
        match = code[None, :] == tl.arange(0, BLOCK_C)[:, None]  # [BLOCK_C, BLOCK_N]
        acc += tl.sum(tl.where(match[:, :, None], x[None, :, :], 0.0), axis=1)

    out_rows = (m * K + offs_c).to(tl.int64)
    tl.store(sums_ptr + out_rows[:, None] * D + offs_d[None, :], acc, mask=mask_c[:, None] & mask_d[None, :])
    if pid_d == 0:
        # other=0 for both bounds: masked codes are not stored.
        seg_lo = tl.load(bounds_ptr + out_rows, mask=mask_c, other=0)
        seg_hi = tl.load(bounds_ptr + out_rows + 1, mask=mask_c, other=0)
        tl.store(counts_ptr + out_rows, (seg_hi - seg_lo).to(tl.float32), mask=mask_c)


def _output(out: torch.Tensor | None, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=torch.float32, device=device)
    check_tensor(out, "dta_accumulate_triton", name, shape=shape, dtypes=(torch.float32,), device=device,
                 contiguous=True)
    return out


def dta_accumulate_triton(
    z: torch.Tensor,
    idx: torch.Tensor,
    num_codes: int,
    self_weight: float,
    cross_weight: float,
    *,
    deterministic: bool = False,
    out_sums: torch.Tensor | None = None,
    out_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z [M, N, D] (fp32/fp16/bf16), idx [M, N] (int32/int64), any strides -> sums fp32 [M, K, D],
    counts fp32 [M, K], contiguous.

    Every element of the outputs is written (zero for codes no frame chose). `out_sums` /
    `out_counts` may be given to write into preallocated (contiguous) buffers.
    """
    where = "dta_accumulate_triton"
    require(z.dim() == 3, where, f"z must be [M, N, D], got shape {tuple(z.shape)}")
    num_mod, num_frames, dim = z.shape
    check_tensor(z, where, "z", dtypes=_LATENT_DTYPES)
    check_tensor(idx, where, "idx", shape=(num_mod, num_frames), dtypes=(torch.int32, torch.int64))
    require(num_mod >= 1 and num_codes >= 1 and dim >= 1, where,
            f"need M, K, D >= 1, got M={num_mod}, K={num_codes}, D={dim}")
    num_codes = int(num_codes)
    with launch_device(where, z=z, idx=idx) as device:
        return _accumulate(z, idx, num_codes, self_weight, cross_weight, deterministic,
                           _output(out_sums, "out_sums", (num_mod, num_codes, dim), device),
                           _output(out_counts, "out_counts", (num_mod, num_codes), device))


def _accumulate(
    z: torch.Tensor, idx: torch.Tensor, num_codes: int, self_weight: float, cross_weight: float, deterministic: bool,
    sums: torch.Tensor, counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The launches of `dta_accumulate_triton` on checked inputs, under its `launch_device`."""
    num_mod, num_frames, dim = z.shape
    a = float(self_weight) - float(cross_weight)
    b = float(cross_weight)
    has_cross = b != 0.0  # a config constant, not data: fine for graph capture
    if not has_cross:
        a = float(self_weight)
    block_d = min(64, triton.next_power_of_2(dim))

    if num_frames == 0:
        sums.zero_()
        counts.zero_()
        return sums, counts

    if not deterministic:
        # The scatter accumulates into the outputs, so they start at zero (two memsets, no sync).
        sums.zero_()
        counts.zero_()
        # 2048-element tiles over 8 warps: ~108 registers on sm_90, no spills (the 64-bit atomic
        # addresses are what costs registers here).
        block_n = 2048 // block_d
        grid = (triton.cdiv(num_frames, block_n), triton.cdiv(dim, block_d))
        launch(
            _dta_accumulate_kernel, grid,
            z, idx, sums, counts,
            num_frames, num_codes, dim,
            z.stride(0), z.stride(1), z.stride(2), idx.stride(0), idx.stride(1),
            a, b,
            M=num_mod, HAS_CROSS=has_cross, BLOCK_N=block_n, BLOCK_D=block_d,
            num_warps=8,
        )
        return sums, counts

    # Deterministic: stable sort of the flat rows m*K + idx[m, n]; invalid codes go to the sentinel
    # row M*K, past every real row, so they fall outside every segment.
    total_rows = num_mod * num_codes
    offsets = num_codes * torch.arange(num_mod, device=idx.device, dtype=torch.int64).unsqueeze(1)
    idx64 = idx.to(torch.int64)
    valid = (idx64 >= 0) & (idx64 < num_codes)
    rows = torch.where(valid, idx64 + offsets, torch.full_like(idx64, total_rows)).reshape(-1)
    sorted_rows, perm = torch.sort(rows, stable=True)
    boundaries = torch.arange(total_rows + 1, device=idx.device, dtype=torch.int64)
    bounds = torch.searchsorted(sorted_rows, boundaries)  # [M*K + 1], left side
    block_c, block_n = 16, 16
    # the [BLOCK_C, BLOCK_N, BLOCK_D] select tile must stay in registers (~100 regs on sm_90)
    grid = (num_mod * triton.cdiv(num_codes, block_c), triton.cdiv(dim, block_d))
    launch(
        _dta_accumulate_sorted_kernel, grid,
        z, sorted_rows, perm, bounds, sums, counts,
        num_frames, num_codes, dim,
        z.stride(0), z.stride(1), z.stride(2),
        a, b,
        M=num_mod, HAS_CROSS=has_cross, BLOCK_C=block_c, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=4,
    )
    return sums, counts
