"""DQA's soft code usage as fused Triton kernels, forward and backward, without the [N, K] matrix.
The math and its eager reference: `assign.py` (`soft_usage_reference`); p = softmax_k(s), s = -sqrt(max(d, 0)),
P[b] = mean over the T frames of sample b of p.

Forward, two passes over E (FlashAttention style, memory O(N*D + K*D + B*K)):
  1. the assign kernel with its log-sum-exp on (assign_triton.py), grid (cdiv(N, BLOCK_N), M): the
     nearest code, its distance and lse [M, N] (saved for backward). DQA's assignment is this pass.
  2. `_soft_usage_fwd_kernel`, grid (cdiv(B, BLOCK_B), cdiv(K, BLOCK_K), M): a program owns BLOCK_B
     whole samples and one code tile; it loops t = 0..T-1 over the frames b*T + t of its samples,
     recomputes the distance tile and sums p = exp(s - lse) over t in registers. No atomics: each P
     element is written once, so the forward is deterministic.

Backward, g[n, k] = dP[b, k] / T, recomputing the distance tiles:
  3. `_soft_usage_bwd_row_kernel`, grid (cdiv(N, BLOCK_N), M): r[n] = sum_k p[n, k] g[n, k] (one pass over K).
  4. `_soft_usage_bwd_dz_kernel`, grid (cdiv(N, BLOCK_N), cdiv(D, BLOCK_DO), M): per K tile,
     dd = p (g - r) * d(-sqrt d)/dd (0 where d <= 0, as neg_safe_sqrt), accumulating dd @ E[:, d-chunk]
     with tl.dot and sum_k dd; dz = 2 (sum_k dd) z - 2 dd @ E. The d-chunk grid axis bounds the
     [BLOCK_N, BLOCK_DO] accumulator for large D (the distance tiles are recomputed once per chunk).
     dd @ E runs at `PREC` on fp32 latents and on TF32 tensor cores for bf16/fp16 latents (their
     codewords are exact in TF32, and dd keeps the fp32 exponent range a half-precision operand would lose).

Layout: z, E and dP are read through their strides (views and expanded upstream gradients are not
copied); P, lse, r and dz are contiguous outputs. ||z||^2 and ||E||^2 are computed once per call with
torch in fp32 and read by every kernel; d keeps the reference's association (||E||^2 + ||z||^2) - 2 z.E
because sqrt(d) near 0 is sensitive to its rounding. The softmax is fp32 whatever the latent dtype;
dz has z's dtype. The codebook is a constant (EMA) buffer: no gradient flows to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .assign_triton import _distance_tile, check_pair, dot_mode, even_d, launch_assign, squared_norms
from .utilities import check_int32_offsets, check_tensor, interpreter_enabled, launch, launch_device, require

__all__ = ["assign_with_soft_usage_triton", "soft_usage_backward", "soft_usage_forward", "soft_usage_triton"]


@triton.jit
def _score_tile(
    z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D, stride_zn, stride_zd, stride_ek, stride_ed,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """(d, s) tiles [BLOCK_N, BLOCK_K]: squared distance and score -sqrt(max(d, 0)).

    Codes past K get d = +inf and s = -inf (exp -> 0: they take no probability mass).
    """
    d = _distance_tile(z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D,
                       stride_zn, stride_zd, stride_ek, stride_ed, DOT_FP32, PREC, EVEN_D, BLOCK_N, BLOCK_K, BLOCK_D)
    return d, -tl.sqrt(tl.maximum(d, 0.0))


@even_d
@triton.jit
def _soft_usage_fwd_kernel(
    z_ptr,  # [M, N, D], any strides
    e_ptr,  # [M, K, D], any strides
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
    stride_zm, stride_zn, stride_zd,
    stride_em, stride_ek, stride_ed,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2).to(tl.int64)
    z_ptr += pid_m * stride_zm
    e_ptr += pid_m * stride_em
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    p_ptr += pid_m * B * K

    samples = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    sample_ok = samples < B
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K

    acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
    for t in range(T):
        rows = samples * T + t  # frame t of each owned sample (rows strided by T)
        zsq = tl.load(zsq_ptr + rows, mask=sample_ok, other=0.0)
        d, s = _score_tile(z_ptr, e_ptr, esq_ptr, zsq, rows, sample_ok, cols, col_ok, D,
                           stride_zn, stride_zd, stride_ek, stride_ed,
                           DOT_FP32, PREC, EVEN_D, BLOCK_B, BLOCK_K, BLOCK_D)
        # other=0 for padded samples: their p is finite garbage and is never stored.
        lse = tl.load(lse_ptr + rows, mask=sample_ok, other=0.0)
        acc += tl.exp(s - lse[:, None])
    tl.store(
        p_ptr + samples[:, None] * K + cols[None, :], acc * inv_T, mask=sample_ok[:, None] & col_ok[None, :]
    )


@even_d
@triton.jit
def _soft_usage_bwd_row_kernel(
    z_ptr,  # [M, N, D], any strides
    e_ptr,  # [M, K, D], any strides
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32
    lse_ptr,  # [M, N] fp32
    dp_ptr,  # [M, B, K] fp32 upstream gradient, any strides
    r_ptr,  # [M, N] fp32 out: sum_k p[n, k] g[n, k]
    N,
    K,
    D,
    B,
    T,
    inv_T,
    stride_zm, stride_zn, stride_zd,
    stride_em, stride_ek, stride_ed,
    stride_gm, stride_gb, stride_gk,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    z_ptr += pid_m * stride_zm
    e_ptr += pid_m * stride_em
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    dp_ptr += pid_m * stride_gm
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
        d, s = _score_tile(z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D,
                           stride_zn, stride_zd, stride_ek, stride_ed,
                           DOT_FP32, PREC, EVEN_D, BLOCK_N, BLOCK_K, BLOCK_D)
        p = tl.exp(s - lse[:, None])
        # other=0: padded codes/rows carry no upstream gradient.
        g = tl.load(dp_ptr + sample[:, None] * stride_gb + cols[None, :] * stride_gk,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        r += tl.sum(p * g, axis=1)
    tl.store(r_ptr + rows, r * inv_T, mask=row_ok)


@even_d
@triton.jit
def _soft_usage_bwd_dz_kernel(
    z_ptr,  # [M, N, D], any strides
    e_ptr,  # [M, K, D], any strides
    esq_ptr,  # [M, K] fp32
    zsq_ptr,  # [M, N] fp32
    lse_ptr,  # [M, N] fp32
    dp_ptr,  # [M, B, K] fp32, any strides
    r_ptr,  # [M, N] fp32
    dz_ptr,  # [M, N, D] out, z's dtype, contiguous
    N,
    K,
    D,
    B,
    T,
    inv_T,
    stride_zm, stride_zn, stride_zd,
    stride_em, stride_ek, stride_ed,
    stride_gm, stride_gb, stride_gk,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    DZ_PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_do = tl.program_id(1)
    pid_m = tl.program_id(2).to(tl.int64)
    z_ptr += pid_m * stride_zm
    e_ptr += pid_m * stride_em
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    lse_ptr += pid_m * N
    dp_ptr += pid_m * stride_gm
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
        d, s = _score_tile(z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D,
                           stride_zn, stride_zd, stride_ek, stride_ed,
                           DOT_FP32, PREC, EVEN_D, BLOCK_N, BLOCK_K, BLOCK_D)
        p = tl.exp(s - lse[:, None])
        g = tl.load(dp_ptr + sample[:, None] * stride_gb + cols[None, :] * stride_gk,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        ds = p * (g * inv_T - r[:, None])
        # d/dd of -sqrt(d) is -1/(2 sqrt d) for d > 0; neg_safe_sqrt has zero gradient where d <= 0
        # (the inner where keeps 1/sqrt away from 0 and negatives). Padded codes: d = inf -> 0.
        pos = d > 0.0
        dd = tl.where(pos, ds * (-0.5 / tl.sqrt(tl.where(pos, d, 1.0))), 0.0)
        dd = tl.where(row_ok[:, None] & col_ok[None, :], dd, 0.0)
        dd_sum += tl.sum(dd, axis=1)
        # other=0: padded codes/dims add nothing to dd @ E.
        e = tl.load(
            e_ptr + cols[:, None] * stride_ek + out_d[None, :] * stride_ed, mask=col_ok[:, None] & out_d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        dd_e = tl.dot(dd, e, dd_e, input_precision=DZ_PREC)

    z_out = tl.load(
        z_ptr + rows[:, None] * stride_zn + out_d[None, :] * stride_zd, mask=row_ok[:, None] & out_d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    dz = 2.0 * dd_sum[:, None] * z_out - 2.0 * dd_e
    tl.store(dz_ptr + rows[:, None] * D + out_d[None, :], dz, mask=row_ok[:, None] & out_d_ok[None, :])


# Per modality, from this many frames on the grid has enough programs with large tiles (several
# waves on 132 SMs), and large tiles read the codebook from L2 fewer times.
MANY_FRAMES = 16384


def _configs(dim: int, num_frames: int, fma: bool) -> dict[str, dict]:
    """Launch settings of the three soft-usage kernels (heuristic, no autotune: one shape family).
    None spills on sm_80 / sm_90 (profiles/compiled.md, checked in CI for both tiers).

    Few frames (the paper: 80 samples / 800 frames per modality for 100+ SMs): small row tiles, so
    that there are enough programs. Many frames: larger tiles, fewer re-reads of E. dz takes all of
    D = 256 in one column chunk where its [BLOCK_K, BLOCK_DO] operand allows (few codes per tile on
    the exact fp32 path, whose dot operands live in registers), so the distance tiles are computed once.
    """
    d_pow2 = max(16, triton.next_power_of_2(dim))
    if interpreter_enabled():
        # few, large numpy blocks: the interpreter pays per op, not per element.
        tiles = dict(BLOCK_K=128, BLOCK_D=min(64, d_pow2), num_warps=4, num_stages=1)
        return {"forward": dict(tiles, BLOCK_B=32), "row": dict(tiles, BLOCK_N=128),
                "dz": dict(tiles, BLOCK_N=128, BLOCK_DO=min(256, d_pow2))}
    block_d = min(32, d_pow2)
    if num_frames < MANY_FRAMES:
        forward = dict(BLOCK_B=16, BLOCK_K=64, num_warps=4)
        row = dict(BLOCK_N=32, BLOCK_K=64, num_warps=4)
    else:
        forward = dict(BLOCK_B=32, BLOCK_K=128, num_warps=8)
        # the exact fp32 path holds its dot operands in registers: 64 codes a tile (128 spilled 16 B
        # on sm_90 with Triton 3.6)
        row = dict(BLOCK_N=64, BLOCK_K=64 if fma else 128, num_warps=8)
    if num_frames < MANY_FRAMES or fma:
        dz = dict(BLOCK_N=16, BLOCK_K=32, BLOCK_DO=min(256, d_pow2), num_warps=4, num_stages=1)
    else:
        dz = dict(BLOCK_N=64, BLOCK_K=64, BLOCK_DO=min(128, d_pow2), num_warps=8, num_stages=2)
    return {"forward": dict(forward, BLOCK_D=block_d, num_stages=2), "row": dict(row, BLOCK_D=block_d, num_stages=2),
            "dz": dict(dz, BLOCK_D=block_d)}


def _check_samples(z, codebook, frames_per_sample, where) -> int:
    """The checks of both launchers; T."""
    check_pair(z, codebook, where)
    require(int(frames_per_sample) == frames_per_sample and frames_per_sample >= 1, where,
            f"frames_per_sample must be a positive int, got {frames_per_sample!r}")
    require(z.shape[1] % frames_per_sample == 0, where,
            f"N={z.shape[1]} frames is not a multiple of T={frames_per_sample}")
    return int(frames_per_sample)


def _output(out, shape, dtype, device, what, where):
    """A preallocated output after its check, or a fresh one (contiguous, int32-addressable)."""
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    check_tensor(out, where, what, shape=shape, dtypes=(dtype,), device=device, contiguous=True)
    check_int32_offsets(where, **{what: out})
    return out


def soft_usage_forward(
    z: torch.Tensor,
    codebook: torch.Tensor,
    frames_per_sample: int,
    *,
    allow_tf32: bool = False,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
    idx_out: torch.Tensor | None = None,
    dist_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launcher, two passes over E: (P [M, B, K] float32, lse [M, N] float32,
    idx [M, N] int64, min_dist [M, N] float32), the last two as `assign_triton`. No autograd.
    z and codebook: any strides; the outputs, given or not, are contiguous."""
    where = "soft_usage_forward"
    T = _check_samples(z, codebook, frames_per_sample, where)
    z, codebook = z.detach(), codebook.detach()
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    B = num_frames // T
    with launch_device(where, z=z, codebook=codebook) as device:
        out = _output(out, (num_mod, B, num_codes), torch.float32, device, "out", where)
        lse_out = _output(lse_out, (num_mod, num_frames), torch.float32, device, "lse_out", where)
        idx_out = _output(idx_out, (num_mod, num_frames), torch.int64, device, "idx_out", where)
        dist_out = _output(dist_out, (num_mod, num_frames), torch.float32, device, "dist_out", where)
        if num_frames == 0:
            return out, lse_out, idx_out, dist_out

        frame_sq, code_sq = squared_norms(z, codebook)
        launch_assign(z, codebook, frame_sq, code_sq, idx_out, dist_out, lse_out, allow_tf32)
        dot_fp32, prec = dot_mode(z, codebook, allow_tf32)
        cfg = _configs(dim, num_frames, fma=dot_fp32 and prec == "ieee")["forward"]
        one_pass = 2 * num_mod * num_frames * num_codes * dim  # FLOPs of one pass of z . E^T
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(num_codes, cfg["BLOCK_K"]), num_mod)
        launch(
            _soft_usage_fwd_kernel, grid,
            z, codebook, code_sq, frame_sq, lse_out, out, num_frames, num_codes, dim, B, T, 1.0 / T,
            *z.stride(), *codebook.stride(), DOT_FP32=dot_fp32, PREC=prec, flops=one_pass, **cfg,
        )
    return out, lse_out, idx_out, dist_out


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
    """Backward launcher: dz [M, N, D] (z's dtype, contiguous) from lse [M, N] (the forward's: float32,
    contiguous) and dP [M, B, K] (float32, as autograd gives it for P; any strides: an expanded
    upstream gradient is read in place). z and codebook: any strides."""
    where = "soft_usage_backward"
    T = _check_samples(z, codebook, frames_per_sample, where)
    z, codebook, lse, grad_p = z.detach(), codebook.detach(), lse.detach(), grad_p.detach()
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    B = num_frames // T
    check_tensor(lse, where, "lse", shape=(num_mod, num_frames), dtypes=(torch.float32,), contiguous=True)
    check_tensor(grad_p, where, "grad_p", shape=(num_mod, B, num_codes), dtypes=(torch.float32,))
    check_int32_offsets(where, grad_p=grad_p)
    with launch_device(where, z=z, codebook=codebook, lse=lse, grad_p=grad_p) as device:
        out = _output(out, (num_mod, num_frames, dim), z.dtype, device, "out", where)
        row_out = _output(row_out, (num_mod, num_frames), torch.float32, device, "row_out", where)
        if num_frames == 0:
            return out

        frame_sq, code_sq = squared_norms(z, codebook)
        dot_fp32, prec = dot_mode(z, codebook, allow_tf32)
        configs = _configs(dim, num_frames, fma=dot_fp32 and prec == "ieee")
        one_pass = 2 * num_mod * num_frames * num_codes * dim  # FLOPs of one pass of z . E^T (or of dd . E)
        inputs = (z, codebook, code_sq, frame_sq, lse, grad_p)
        sizes = (num_frames, num_codes, dim, B, T, 1.0 / T, *z.stride(), *codebook.stride(), *grad_p.stride())
        cfg = configs["row"]
        launch(
            _soft_usage_bwd_row_kernel, (triton.cdiv(num_frames, cfg["BLOCK_N"]), num_mod), *inputs, row_out, *sizes,
            DOT_FP32=dot_fp32, PREC=prec, flops=one_pass, **cfg,
        )
        cfg = configs["dz"]
        d_chunks = triton.cdiv(dim, cfg["BLOCK_DO"])  # each recomputes the distance tiles
        launch(
            _soft_usage_bwd_dz_kernel, (triton.cdiv(num_frames, cfg["BLOCK_N"]), d_chunks, num_mod),
            *inputs, row_out, out, *sizes,
            DOT_FP32=dot_fp32, PREC=prec, DZ_PREC=prec if dot_fp32 else "tf32", flops=(d_chunks + 1) * one_pass, **cfg,
        )
    return out


class _SoftUsageTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, codebook, frames_per_sample, allow_tf32):
        probs, lse, idx, min_dist = soft_usage_forward(z, codebook, frames_per_sample, allow_tf32=allow_tf32)
        ctx.save_for_backward(z, codebook, lse)  # O(N*D + K*D + N): no [N, K] is kept
        ctx.frames_per_sample = frames_per_sample
        ctx.allow_tf32 = allow_tf32
        ctx.mark_non_differentiable(idx, min_dist)
        return probs, idx, min_dist

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_p, _grad_idx, _grad_dist):
        z, codebook, lse = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = soft_usage_backward(z, codebook, ctx.frames_per_sample, lse, grad_p, allow_tf32=ctx.allow_tf32)
        # The codebook is a constant (EMA) buffer: no gradient to it by design.
        return dz, None, None, None


def assign_with_soft_usage_triton(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int, *, allow_tf32: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx [M, N] int64, min_dist [M, N] float32, P [M, B, K] float32) in two passes over E.

    As `assign_with_soft_usage_reference`; P is differentiable w.r.t. z only (the codebook gets no
    grad). The indices are those `assign_triton` gives (same kernel, same configuration).
    """
    probs, idx, min_dist = _SoftUsageTriton.apply(z, codebook, frames_per_sample, allow_tf32)
    return idx, min_dist, probs


def soft_usage_triton(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int, *, allow_tf32: bool = False
) -> torch.Tensor:
    """Per-sample soft code usage P [M, B, K] float32, differentiable w.r.t. z only.

    Matches `soft_usage_reference(z, codebook, frames_per_sample)`; the codebook gets no grad.
    """
    return assign_with_soft_usage_triton(z, codebook, frames_per_sample, allow_tf32=allow_tf32)[2]
