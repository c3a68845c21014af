"""Soft code usage for DQA as fused Triton kernels, forward and backward, without [N, K].

Math (see `assign.py`, `soft_usage_reference`): for modality m, frame n = b*T + t, code k

    d[n, k] = ||z[n]||^2 + ||E[k]||^2 - 2 z[n] . E[k]
    s[n, k] = -sqrt(max(d[n, k], 0))                 (safe_sqrt: 0 with zero gradient if d <= 0)
    p[n, k] = softmax_k(s[n, :]) = exp(s[n, k] - lse[n]),  lse[n] = logsumexp_k s[n, k]
    P[b, k] = 1/T * sum_t p[b*T + t, k]

Forward (two kernels, FlashAttention style, memory O(N*D + K*D + B*K)):
  1. `_soft_usage_lse_kernel`, grid (cdiv(N, BLOCK_N), M): one pass over K tiles with an online
     max / sum-exp per frame -> lse [M, N] (saved for backward, O(N)).
  2. `_soft_usage_fwd_kernel`, grid (cdiv(B, BLOCK_B), cdiv(K, BLOCK_K), M): a program owns
     BLOCK_B whole samples and one code tile; it loops t = 0..T-1 over the frames b*T + t of
     its samples, recomputes the distance tile, and sums p over t in registers. Deterministic:
     no atomics, each P element is written once.

Backward, given g[n, k] = dP[b, k] / T (softmax + chain rule, recomputing d tiles):

    r[n]      = sum_j p[n, j] g[n, j]
    ds[n, k]  = p[n, k] (g[n, k] - r[n])
    dd[n, k]  = ds[n, k] * (-1 / (2 sqrt(d[n, k])))  if d > 0 else 0
    dz[n]     = 2 (sum_k dd[n, k]) z[n] - 2 sum_k dd[n, k] E[k]

  3. `_soft_usage_bwd_row_kernel`, grid (cdiv(N, BLOCK_N), M): r [M, N] (one pass over K).
  4. `_soft_usage_bwd_dz_kernel`, grid (cdiv(N, BLOCK_N), cdiv(D, BLOCK_DO), M): recompute d
     and p per K tile, form dd and accumulate dd @ E[:, d-chunk] with tl.dot plus sum_k dd.
     The d-chunk grid axis bounds the [BLOCK_N, BLOCK_DO] accumulator for large D (the
     distance tile is recomputed once per chunk).

||z||^2 [M, N] and ||E||^2 [M, K] are computed once per call with torch in fp32 (the same op
as the reference) and read by every kernel; d keeps the reference's association
(||E||^2 + ||z||^2) - 2 z.E because sqrt(d) near 0 is sensitive to the rounding of d.

The codebook is a constant buffer: no gradient flows to it (the autograd function returns
None for it). The softmax is computed in fp32 whatever the latent dtype; dz has z's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .assign_triton import _check_pair, _dot_mode, _dot_tile, _interpret

__all__ = ["soft_usage_triton", "soft_usage_forward", "soft_usage_backward"]


@triton.jit
def _score_tile(
    z_ptr,
    e_ptr,
    esq_ptr,
    zsq,
    rows,
    row_ok,
    cols,
    col_ok,
    D,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(d, s) tiles [BLOCK_N, BLOCK_K]: squared distance and score -sqrt(max(d, 0)).

    Codes past K get s = -inf (exp -> 0: they take no probability mass) and d = +inf.
    """
    dot = _dot_tile(z_ptr, e_ptr, rows, row_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_N, BLOCK_K, BLOCK_D)
    # other=0: the masked columns are overwritten just below.
    esq = tl.load(esq_ptr + cols, mask=col_ok, other=0.0)
    # same association as the reference's baddbmm: (||E||^2 + ||z||^2) - 2 z.E
    d = (esq[None, :] + zsq[:, None]) - 2.0 * dot
    d = tl.where(col_ok[None, :], d, float("inf"))
    s = -tl.sqrt(tl.maximum(d, 0.0))
    return d, s


@triton.jit
def _soft_usage_lse_kernel(
    z_ptr,  # [M, N, D]
    e_ptr,  # [M, K, D]
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32 frame squared norms
    lse_ptr,  # [M, N] fp32 out
    N,
    K,
    D,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    z_ptr += pid_m * N * D
    e_ptr += pid_m * K * D
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)

    # Online logsumexp. Every K tile holds at least one real code, so run_max is finite after
    # the first tile and exp(-inf - finite) = 0 rescales the initial zero sum harmlessly.
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        d, s = _score_tile(
            z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_N, BLOCK_K, BLOCK_D
        )
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(lse_ptr + rows, run_max + tl.log(run_sum), mask=row_ok)


@triton.jit
def _soft_usage_fwd_kernel(
    z_ptr,  # [M, N, D]
    e_ptr,  # [M, K, D]
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32
    lse_ptr,  # [M, N] fp32
    p_ptr,  # [M, B, K] fp32 out
    N,
    K,
    D,
    B,
    T,
    inv_T,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2).to(tl.int64)
    z_ptr += pid_m * N * D
    e_ptr += pid_m * K * D
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    p_ptr += pid_m * B * K

    samples = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    sample_ok = samples < B
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K

    acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
    for t in range(0, T):
        rows = samples * T + t  # frame t of each owned sample (rows strided by T)
        zsq = tl.load(zsq_ptr + rows, mask=sample_ok, other=0.0)
        d, s = _score_tile(
            z_ptr, e_ptr, esq_ptr, zsq, rows, sample_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_B, BLOCK_K, BLOCK_D
        )
        # other=0 for padded samples: their p is finite garbage and is never stored.
        lse = tl.load(lse_ptr + rows, mask=sample_ok, other=0.0)
        acc += tl.exp(s - lse[:, None])
    tl.store(
        p_ptr + samples[:, None] * K + cols[None, :], acc * inv_T, mask=sample_ok[:, None] & col_ok[None, :]
    )


@triton.jit
def _soft_usage_bwd_row_kernel(
    z_ptr,  # [M, N, D]
    e_ptr,  # [M, K, D]
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32
    lse_ptr,  # [M, N] fp32
    dp_ptr,  # [M, B, K] fp32 upstream gradient
    r_ptr,  # [M, N] fp32 out: sum_k p[n, k] g[n, k]
    N,
    K,
    D,
    B,
    T,
    inv_T,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    z_ptr += pid_m * N * D
    e_ptr += pid_m * K * D
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    dp_ptr += pid_m * B * K
    r_ptr += pid_m * N

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    sample = rows // T
    offs_k = tl.arange(0, BLOCK_K)
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)

    r = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        d, s = _score_tile(
            z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_N, BLOCK_K, BLOCK_D
        )
        p = tl.exp(s - lse[:, None])
        # other=0: padded codes/rows carry no upstream gradient.
        g = tl.load(dp_ptr + sample[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        r += tl.sum(p * g, axis=1)
    tl.store(r_ptr + rows, r * inv_T, mask=row_ok)


@triton.jit
def _soft_usage_bwd_dz_kernel(
    z_ptr,  # [M, N, D]
    e_ptr,  # [M, K, D]
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32
    lse_ptr,  # [M, N] fp32
    dp_ptr,  # [M, B, K] fp32
    r_ptr,  # [M, N] fp32
    dz_ptr,  # [M, N, D] out, z's dtype
    N,
    K,
    D,
    B,
    T,
    inv_T,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_do = tl.program_id(1)
    pid_m = tl.program_id(2).to(tl.int64)
    z_ptr += pid_m * N * D
    e_ptr += pid_m * K * D
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    dp_ptr += pid_m * B * K
    r_ptr += pid_m * N
    dz_ptr += pid_m * N * D

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    sample = rows // T
    offs_k = tl.arange(0, BLOCK_K)
    out_d = pid_do * BLOCK_DO + tl.arange(0, BLOCK_DO)
    out_d_ok = out_d < D
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    r = tl.load(r_ptr + rows, mask=row_ok, other=0.0)

    dd_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    dd_e = tl.zeros([BLOCK_N, BLOCK_DO], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        d, s = _score_tile(
            z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_N, BLOCK_K, BLOCK_D
        )
        p = tl.exp(s - lse[:, None])
        g = tl.load(dp_ptr + sample[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        ds = p * (g * inv_T - r[:, None])
        # d/dd of -sqrt(d) is -1/(2 sqrt d) for d > 0; safe_sqrt has zero gradient where d <= 0
        # (the inner where keeps 1/sqrt away from 0 and negatives). Padded codes: d = inf -> 0.
        pos = d > 0.0
        dd = tl.where(pos, ds * (-0.5 / tl.sqrt(tl.where(pos, d, 1.0))), 0.0)
        dd = tl.where(row_ok[:, None] & col_ok[None, :], dd, 0.0)
        dd_sum += tl.sum(dd, axis=1)
        # other=0: padded codes/dims add nothing to dd @ E.
        e = tl.load(
            e_ptr + cols[:, None] * D + out_d[None, :], mask=col_ok[:, None] & out_d_ok[None, :], other=0.0
        ).to(tl.float32)
        dd_e = tl.dot(dd, e, dd_e, input_precision=PREC)

    z_out = tl.load(
        z_ptr + rows[:, None] * D + out_d[None, :], mask=row_ok[:, None] & out_d_ok[None, :], other=0.0
    ).to(tl.float32)
    dz = 2.0 * dd_sum[:, None] * z_out - 2.0 * dd_e
    tl.store(dz_ptr + rows[:, None] * D + out_d[None, :], dz, mask=row_ok[:, None] & out_d_ok[None, :])


def _config(num_frames: int, num_codes: int, dim: int) -> dict:
    """Block sizes (heuristic, no autotune: four kernels share one shape family)."""
    d_pow2 = max(16, triton.next_power_of_2(dim))
    if _interpret():
        # few, large numpy blocks: the interpreter pays per op, not per element.
        return dict(
            BLOCK_N=128, BLOCK_B=32, BLOCK_K=128, BLOCK_D=min(64, d_pow2), BLOCK_DO=min(256, d_pow2),
            num_warps=4, num_stages=1,
        )
    return dict(
        BLOCK_N=64, BLOCK_B=32, BLOCK_K=64, BLOCK_D=min(64, d_pow2), BLOCK_DO=min(128, d_pow2),
        num_warps=4, num_stages=2,
    )


def _prepare(z, codebook, frames_per_sample, name):
    _check_pair(z, codebook, name)
    if int(frames_per_sample) != frames_per_sample or frames_per_sample < 1:
        raise ValueError(f"{name}: frames_per_sample must be a positive int, got {frames_per_sample!r}")
    num_frames = z.shape[1]
    if num_frames % frames_per_sample:
        raise ValueError(f"{name}: N={num_frames} frames is not a multiple of T={frames_per_sample}")
    z = z.detach().contiguous()
    codebook = codebook.detach().contiguous()
    cb32 = codebook.float()
    code_sq = (cb32 * cb32).sum(-1).contiguous()  # once per call, as the reference computes it
    z32 = z.float()
    frame_sq = (z32 * z32).sum(-1).contiguous()  # [M, N]: one O(N*D) pass instead of per K tile
    return z, codebook, code_sq, frame_sq


def _check_out(t, shape, dtype, what, name):
    if t.shape != shape or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name}: {what} must be contiguous {dtype} {list(shape)}, got {t.dtype} {list(t.shape)}")


def soft_usage_forward(
    z: torch.Tensor,
    codebook: torch.Tensor,
    frames_per_sample: int,
    *,
    allow_tf32: bool = False,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: (P [M, B, K] float32, lse [M, N] float32). No autograd."""
    name = "soft_usage_forward"
    z, codebook, code_sq, frame_sq = _prepare(z, codebook, frames_per_sample, name)
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    T = int(frames_per_sample)
    B = num_frames // T
    if out is None:
        out = torch.empty((num_mod, B, num_codes), dtype=torch.float32, device=z.device)
    _check_out(out, (num_mod, B, num_codes), torch.float32, "out", name)
    if lse_out is None:
        lse_out = torch.empty((num_mod, num_frames), dtype=torch.float32, device=z.device)
    _check_out(lse_out, (num_mod, num_frames), torch.float32, "lse_out", name)
    if num_frames == 0:
        return out, lse_out

    cfg = _config(num_frames, num_codes, dim)
    dot_fp32, prec = _dot_mode(z, codebook, allow_tf32)
    common = dict(DOT_FP32=dot_fp32, PREC=prec, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    _soft_usage_lse_kernel[(triton.cdiv(num_frames, cfg["BLOCK_N"]), num_mod)](
        z, codebook, code_sq, frame_sq, lse_out, num_frames, num_codes, dim,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"], **common,
    )
    grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(num_codes, cfg["BLOCK_K"]), num_mod)
    _soft_usage_fwd_kernel[grid](
        z, codebook, code_sq, frame_sq, lse_out, out, num_frames, num_codes, dim, B, T, 1.0 / T,
        BLOCK_B=cfg["BLOCK_B"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"], **common,
    )
    return out, lse_out


def soft_usage_backward(
    z: torch.Tensor,
    codebook: torch.Tensor,
    frames_per_sample: int,
    lse: torch.Tensor,
    grad_p: torch.Tensor,
    *,
    allow_tf32: bool = False,
    out: torch.Tensor | None = None,
    row_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backward launcher: dz [M, N, D] (z's dtype) from lse [M, N] and dP [M, B, K]."""
    name = "soft_usage_backward"
    z_dtype = z.dtype
    z, codebook, code_sq, frame_sq = _prepare(z, codebook, frames_per_sample, name)
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    T = int(frames_per_sample)
    B = num_frames // T
    lse = lse.detach().float().contiguous()
    grad_p = grad_p.detach().float().contiguous()  # upstream grads may be expanded / strided
    _check_out(lse, (num_mod, num_frames), torch.float32, "lse", name)
    _check_out(grad_p, (num_mod, B, num_codes), torch.float32, "grad_p", name)
    if out is None:
        out = torch.empty((num_mod, num_frames, dim), dtype=z_dtype, device=z.device)
    _check_out(out, (num_mod, num_frames, dim), z_dtype, "out", name)
    if row_out is None:
        row_out = torch.empty((num_mod, num_frames), dtype=torch.float32, device=z.device)
    _check_out(row_out, (num_mod, num_frames), torch.float32, "row_out", name)
    if num_frames == 0:
        return out

    cfg = _config(num_frames, num_codes, dim)
    dot_fp32, prec = _dot_mode(z, codebook, allow_tf32)
    common = dict(
        DOT_FP32=dot_fp32, PREC=prec, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    n_blocks = triton.cdiv(num_frames, cfg["BLOCK_N"])
    _soft_usage_bwd_row_kernel[(n_blocks, num_mod)](
        z, codebook, code_sq, frame_sq, lse, grad_p, row_out, num_frames, num_codes, dim, B, T, 1.0 / T, **common
    )
    grid = (n_blocks, triton.cdiv(dim, cfg["BLOCK_DO"]), num_mod)
    _soft_usage_bwd_dz_kernel[grid](
        z, codebook, code_sq, frame_sq, lse, grad_p, row_out, out, num_frames, num_codes, dim, B, T, 1.0 / T,
        BLOCK_DO=cfg["BLOCK_DO"], **common,
    )
    return out


class _SoftUsageTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, codebook, frames_per_sample, allow_tf32):
        probs, lse = soft_usage_forward(z, codebook, frames_per_sample, allow_tf32=allow_tf32)
        ctx.save_for_backward(z, codebook, lse)  # O(N*D + K*D + N): no [N, K] is kept
        ctx.frames_per_sample = frames_per_sample
        ctx.allow_tf32 = allow_tf32
        return probs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_p):
        z, codebook, lse = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = soft_usage_backward(z, codebook, ctx.frames_per_sample, lse, grad_p, allow_tf32=ctx.allow_tf32)
        # The codebook is a constant (EMA) buffer: no gradient to it by design.
        return dz, None, None, None


def soft_usage_triton(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int, *, allow_tf32: bool = False
) -> torch.Tensor:
    """Per-sample soft code usage P [M, B, K] float32, differentiable w.r.t. z only.

    Matches `soft_usage_reference(z, codebook, frames_per_sample)`; the codebook gets no grad.
    """
    return _SoftUsageTriton.apply(z, codebook, frames_per_sample, allow_tf32)
