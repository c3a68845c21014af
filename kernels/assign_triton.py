"""Nearest-code assignment as one fused Triton kernel, optionally with the softmax normaliser that
DQA's soft usage needs from the same distance tiles. The math and its eager reference: `assign.py`.

Layout: one launch for all modalities, grid = (cdiv(N, BLOCK_N), M). A program owns BLOCK_N frames
of one modality, walks the codebook in BLOCK_K tiles, computes each [BLOCK_N, BLOCK_K] tile of
z . E^T with tl.dot (fp32 accumulation, D looped in BLOCK_D chunks, no D mask when BLOCK_D divides
D: `EVEN_D`, chosen per autotune config) and keeps a running (best value, best index) per frame.
The [N, K] distances never exist in memory. z and E are read through their strides (views are not
copied); the modality offset is int64, offsets inside a modality int32. The squared norms ||z||^2
and ||E||^2 are one small torch reduction each per call, the reference's op.

Rounding: d = (||E||^2 + ||z||^2) - 2 z.E in the reference's association, so that ties and near-ties
are decided on the same rounded values. With `with_lse` the same program keeps an online
log-sum-exp of s = -sqrt(max(d, 0)), whose running maximum is -sqrt(max(best value, 0)): the first
of the two passes of DQA's forward (soft_usage_triton.py). `with_lse` is a run-time flag, not a
specialisation: assign alone and the fused pass are one compiled kernel with one autotuned
configuration per shape, so the indices with DQA on and off agree bit for bit.

Ties: inside a tile the lowest column among those equal to the tile minimum wins; across tiles the
running best is replaced only on a strictly smaller value, so an earlier (lower-index) tile keeps a
tie, as torch.argmin. Codes past K are masked to +inf so they never win.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utilities import check_int32_offsets, check_tensor, interpreter_enabled, launch, launch_device, require

__all__ = ["assign_triton", "autotune_configs"]

_LATENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# No D mask in the distance tiles when BLOCK_D divides D (D = 256 in the paper): decided per config,
# after the autotuner (or a fixed launch setting) has chosen BLOCK_D. Shared with the soft-usage kernels.
even_d = triton.heuristics({"EVEN_D": lambda args: args["D"] % args["BLOCK_D"] == 0})


@triton.jit
def _dot_tile(
    z_ptr, e_ptr, rows, row_ok, cols, col_ok, D, stride_zn, stride_zd, stride_ek, stride_ed,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """[BLOCK_N, BLOCK_K] tile of z . E^T for frames `rows` and codes `cols` of one modality, fp32
    accumulation over D chunks (shared with the soft-usage kernels)."""
    offs_d = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        # other=0 on both operands: padded rows / codes (/ dims) contribute 0 to the dot.
        if EVEN_D:  # no dimension mask to carry
            a_mask = row_ok[:, None]
            b_mask = col_ok[None, :]
        else:
            d_ok = (d0 + offs_d) < D
            a_mask = row_ok[:, None] & d_ok[None, :]
            b_mask = col_ok[None, :] & d_ok[:, None]
        dims = d0 + offs_d
        a = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :] * stride_zd, mask=a_mask, other=0.0)
        b = tl.load(e_ptr + cols[None, :] * stride_ek + dims[:, None] * stride_ed, mask=b_mask, other=0.0)
        if DOT_FP32:
            # fp32 (or mixed-dtype) operands: upcast; PREC picks exact "ieee" or "tf32".
            dot = tl.dot(a.to(tl.float32), b.to(tl.float32), dot, input_precision=PREC)
        else:
            # both bf16 (or both fp16): products are exact in fp32, accumulation is fp32.
            dot = tl.dot(a, b, dot)
    return dot


@triton.jit
def _distance_tile(
    z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D, stride_zn, stride_zd, stride_ek, stride_ed,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Squared distances [BLOCK_N, BLOCK_K], (||E||^2 + ||z||^2) - 2 z.E as the reference; +inf past K."""
    dot = _dot_tile(z_ptr, e_ptr, rows, row_ok, cols, col_ok, D, stride_zn, stride_zd, stride_ek, stride_ed,
                    DOT_FP32, PREC, EVEN_D, BLOCK_N, BLOCK_K, BLOCK_D)
    # other=0: the masked columns are overwritten just below.
    esq = tl.load(esq_ptr + cols, mask=col_ok, other=0.0)
    d = (esq[None, :] + zsq[:, None]) - 2.0 * dot
    return tl.where(col_ok[None, :], d, float("inf"))


@triton.jit
def _argmin_update(best_val, best_idx, d, cols):
    """Fold a distance tile into the running (minimum, index) per row: lowest column on a tie
    inside the tile, the earlier tile on a tie across tiles (strictly smaller replaces)."""
    tile_min = tl.min(d, axis=1)
    # Two plain reductions instead of one (value, index) reduction: no index tile is carried.
    tile_arg = tl.min(tl.where(d == tile_min[:, None], cols[None, :], 2147483647), axis=1)
    better = tile_min < best_val
    return tl.where(better, tile_min, best_val), tl.where(better, tile_arg, best_idx)


@even_d
@triton.jit(do_not_specialize=["WITH_LSE"])
def _assign_kernel(
    z_ptr,  # [M, N, D] fp32/bf16/fp16, any strides
    e_ptr,  # [M, K, D] fp32/bf16/fp16, any strides
    esq_ptr,  # [M, K] fp32 codebook squared norms, contiguous
    zsq_ptr,  # [M, N] fp32 frame squared norms, contiguous
    idx_ptr,  # [M, N] int64 out, contiguous
    dist_ptr,  # [M, N] fp32 out, contiguous
    lse_ptr,  # [M, N] fp32 out when WITH_LSE (else never touched), contiguous
    N,
    K,
    D,
    stride_zm, stride_zn, stride_zd,
    stride_em, stride_ek, stride_ed,
    WITH_LSE,  # run-time flag: one binary (and one autotuned config) for assign alone and DQA's pass
    N_BUCKET,  # autotune keys only (bucketed sizes); unused in the body
    K_BUCKET,
    D_BUCKET,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    # int64 modality offsets: M*N*D may pass 2^31 even when one modality does not.
    pid_m = tl.program_id(1).to(tl.int64)
    z_ptr += pid_m * stride_zm
    e_ptr += pid_m * stride_em
    esq_ptr += pid_m * K
    zsq_ptr += pid_m * N
    idx_ptr += pid_m * N
    dist_ptr += pid_m * N
    lse_ptr += pid_m * N

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    # other=0: padded rows get finite garbage that is never stored.
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)

    best_val = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    # Online logsumexp of s = -sqrt(max(d, 0)). Every K tile holds a real code, so the running
    # maximum is finite after the first tile and exp(-inf - finite) = 0 rescales the empty sum.
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        d = _distance_tile(z_ptr, e_ptr, esq_ptr, zsq, rows, row_ok, cols, col_ok, D,
                           stride_zn, stride_zd, stride_ek, stride_ed,
                           DOT_FP32, PREC, EVEN_D, BLOCK_N, BLOCK_K, BLOCK_D)
        best_val, best_idx = _argmin_update(best_val, best_idx, d, cols)
        if WITH_LSE != 0:
            new_max = -tl.sqrt(tl.maximum(best_val, 0.0))  # = max_k s over the tiles so far
            s = -tl.sqrt(tl.maximum(d, 0.0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
            run_max = new_max

    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, best_val, mask=row_ok)
    if WITH_LSE != 0:
        tl.store(lse_ptr + rows, run_max + tl.log(run_sum), mask=row_ok)


def _bucket(x: int) -> int:
    """Power-of-two bucket so the autotuner re-tunes per size class, not per exact size."""
    return triton.next_power_of_2(max(int(x), 1))


# The configurations the autotuner may pick, (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages). None
# spills on sm_80 or sm_90 on the paths it serves (profiles/compiled.md, checked in CI). The exact fp32
# path runs tl.dot on FMA units: its operand tiles live in registers, so it wants small BLOCK_D and
# more warps per tile than the tensor-core paths.
_FMA_CONFIGS = [
    (16, 64, 32, 4, 3),
    (16, 128, 16, 4, 2),
    (32, 64, 32, 8, 3),
    (32, 128, 32, 8, 3),
    (64, 64, 32, 8, 3),
    (64, 128, 16, 8, 2),
]
_MMA_CONFIGS = [  # tf32, bf16, fp16
    (16, 64, 32, 4, 3),  # small-N shapes (paper: N = 800 per modality) need more programs than SMs
    (16, 128, 32, 4, 3),
    (32, 64, 32, 4, 3),
    (64, 64, 32, 4, 3),  # from BLOCK_N = 64 with 4 warps per 64 rows: wgmma on sm_90
    (64, 64, 64, 4, 2),
    (64, 128, 32, 4, 3),
    (128, 64, 32, 8, 4),
    (128, 128, 32, 8, 3),
]
# Removed from the list this kernel started with (compiled for sm_80 / sm_90, profiles/compiled.md):
#   (128, 128, 32, 8, 3) on the fp32 path: spills on both (0.4 KB / 0.1 KB of stores);
#   (128, 64, 64, 4, 3): spills on both on the fp32 path, on sm_80 with tf32 (and 147 KB of shared
#     memory on sm_90: one block per SM);
#   (64, 128, 32, 4, 3) and (64, 64, 64, 4, 2) on the fp32 path: spill on sm_80 (and the former on sm_90);
#   (32, 64, 32, 2, 3): tf32 spills on sm_90, the fp32 path runs at 254 registers on sm_80.
_INTERPRET_CONFIG = dict(BLOCK_N=64, BLOCK_K=128, BLOCK_D=64)


def autotune_configs(fma: bool | None = None) -> list[triton.Config]:
    """The configs the autotuner may pick: for the exact fp32 path (`fma`), the tensor-core paths, or both."""
    chosen = {True: _FMA_CONFIGS, False: _MMA_CONFIGS, None: _FMA_CONFIGS + _MMA_CONFIGS}[fma]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd), num_warps=w, num_stages=s)
            for bn, bk, bd, w, s in dict.fromkeys(chosen)]


# One autotuner per family over the same kernel; each keys its choice by size class and dtype path.
_KEYS = ["N_BUCKET", "K_BUCKET", "D_BUCKET", "DOT_FP32", "PREC"]
_assign_kernel_tuned = {fma: triton.autotune(configs=autotune_configs(fma), key=_KEYS)(_assign_kernel)
                        for fma in (True, False)}


def check_pair(z: torch.Tensor, codebook: torch.Tensor, where: str) -> None:
    """Shape, dtype and offset checks shared by the distance-tile launchers (their devices: `launch_device`)."""
    require(z.dim() == 3 and codebook.dim() == 3, where,
            f"expected z [M, N, D] and codebook [M, K, D], got {tuple(z.shape)} and {tuple(codebook.shape)}")
    require(z.shape[0] == codebook.shape[0] and z.shape[2] == codebook.shape[2], where,
            f"z {tuple(z.shape)} and codebook {tuple(codebook.shape)} disagree on M or D")
    require(codebook.shape[1] >= 1 and z.shape[2] >= 1, where,
            f"need K >= 1 codes and D >= 1 dims, got codebook {tuple(codebook.shape)}")
    check_tensor(z, where, "z", dtypes=_LATENT_DTYPES)
    check_tensor(codebook, where, "codebook", dtypes=_LATENT_DTYPES)
    check_int32_offsets(where, z=z, codebook=codebook)


def squared_norms(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||z||^2 [M, N], ||E||^2 [M, K]) in fp32, once per call, the same op as the reference."""
    z32, cb32 = z.float(), codebook.float()
    return (z32 * z32).sum(-1).contiguous(), (cb32 * cb32).sum(-1).contiguous()


def dot_mode(z: torch.Tensor, codebook: torch.Tensor, allow_tf32: bool) -> tuple[bool, str]:
    """(DOT_FP32, PREC): native half-precision dot only when both operands share that dtype."""
    native = z.dtype == codebook.dtype and z.dtype in (torch.bfloat16, torch.float16)
    # The Triton 3.x interpreter computes a native bf16 x bf16 tl.dot wrongly (raw bit patterns);
    # upcasting gives the same exact-product fp32 result, so the interpreter always upcasts.
    native = native and not interpreter_enabled()
    return (not native), ("tf32" if allow_tf32 else "ieee")


def launch_assign(
    z: torch.Tensor, codebook: torch.Tensor, frame_sq: torch.Tensor, code_sq: torch.Tensor,
    idx: torch.Tensor, min_dist: torch.Tensor, lse: torch.Tensor | None, allow_tf32: bool,
) -> None:
    """The assign kernel on checked inputs (z, codebook: any strides; the rest contiguous), under the
    caller's `launch_device`; `lse` given: also the log-sum-exp pass."""
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    dot_fp32, prec = dot_mode(z, codebook, allow_tf32)
    args = (z, codebook, code_sq, frame_sq, idx, min_dist, min_dist if lse is None else lse,
            num_frames, num_codes, dim, *z.stride(), *codebook.stride(), int(lse is not None))
    keys = dict(N_BUCKET=_bucket(num_frames), K_BUCKET=_bucket(num_codes), D_BUCKET=_bucket(dim))
    flops = 2 * num_mod * num_frames * num_codes * dim  # one pass of z . E^T
    if interpreter_enabled():
        # numpy would time every autotune config: one fixed config under the interpreter.
        cfg = _INTERPRET_CONFIG
        grid = (triton.cdiv(num_frames, cfg["BLOCK_N"]), num_mod)
        launch(_assign_kernel, grid, *args, **keys, DOT_FP32=dot_fp32, PREC=prec, flops=flops, **cfg)
    else:
        tuner = _assign_kernel_tuned[dot_fp32 and prec == "ieee"]

        def grid(meta: dict) -> tuple[int, int]:  # the autotuner picks BLOCK_N
            return triton.cdiv(num_frames, meta["BLOCK_N"]), num_mod

        launch(tuner, grid, *args, **keys, DOT_FP32=dot_fp32, PREC=prec, flops=flops)


def assign_triton(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    allow_tf32: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per frame for all modalities in one launch.

    z [M, N, D] (fp32/bf16/fp16), codebook [M, K, D] (fp32/bf16/fp16), any strides (read in place) ->
    (idx [M, N] int64, min_dist [M, N] float32), as `assign_reference`.
    allow_tf32: fp32 dot products on TF32 tensor cores (faster on GPU, ~1e-3 relative error
    in the ranking). out: optional preallocated, contiguous (idx, min_dist) to write into.
    No gradient flows (inputs are detached).
    """
    where = "assign_triton"
    check_pair(z, codebook, where)
    num_mod, num_frames, _ = z.shape
    z, codebook = z.detach(), codebook.detach()
    with launch_device(where, z=z, codebook=codebook) as device:
        if out is None:
            idx = torch.empty((num_mod, num_frames), dtype=torch.int64, device=device)
            min_dist = torch.empty((num_mod, num_frames), dtype=torch.float32, device=device)
        else:
            idx, min_dist = out
            shape = (num_mod, num_frames)
            check_tensor(idx, where, "out idx", shape=shape, dtypes=(torch.int64,), device=device, contiguous=True)
            check_tensor(min_dist, where, "out min_dist", shape=shape, dtypes=(torch.float32,), device=device,
                         contiguous=True)
        if num_frames:
            frame_sq, code_sq = squared_norms(z, codebook)
            launch_assign(z, codebook, frame_sq, code_sq, idx, min_dist, None, allow_tf32)
    return idx, min_dist
