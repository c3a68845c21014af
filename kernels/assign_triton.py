"""Nearest-code assignment (paper Eq. 3) as one fused Triton kernel.

For every modality m and frame n (see `assign.py` for the eager reference):

    d[m, n, k] = ||z[m, n]||^2 + ||E[m, k]||^2 - 2 z[m, n] . E[m, k]
    idx[m, n]  = argmin_k d[m, n, k]          (lowest index wins a tie, as torch.argmin)
    min_dist   = d[m, n, idx[m, n]]

||z||^2 does not change the argmin, so the kernel ranks codes by

    r[n, k] = ||E[k]||^2 - 2 z[n] . E[k]

and adds ||z[n]||^2 to the winning value at the end, so `min_dist` is the squared distance
the reference reports (up to fp32 rounding order).

Kernel layout: one launch for all modalities, grid = (cdiv(N, BLOCK_N), M). A program owns
BLOCK_N frames of one modality, walks the codebook in BLOCK_K tiles, computes each
[BLOCK_N, BLOCK_K] tile of z . E^T with tl.dot (fp32 accumulation, D looped in BLOCK_D
chunks with masks so any D works) and keeps a running (best value, best index) per frame.
The [N, K] distance matrix never exists in memory: memory traffic is O(M*(N*D + K*D)) per
BLOCK_N frames. Codebook squared norms are one small torch reduction per call.

Ties: inside a tile tl.min(..., return_indices_tie_break_left=True) returns the lowest
column; across tiles the running best is replaced only on a strictly smaller value, so an
earlier (lower-index) tile keeps a tie. Codes past K are masked to +inf so they never win.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["assign_triton"]

def _interpret() -> bool:
    """True under the Triton interpreter (CPU, CI): there autotuning would time every config in
    numpy, so one fixed config is used. TRITON_INTERPRET=1 must be set before this module is
    imported anyway: triton.jit picks interpreter vs compiler when the kernels are decorated."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _dot_tile(
    z_ptr, e_ptr, rows, row_ok, cols, col_ok, D,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """[BLOCK_N, BLOCK_K] tile of z . E^T for frames `rows` and codes `cols`, fp32 accumulation
    over D chunks (shared with the soft-usage kernels)."""
    offs_d = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        # other=0 on both operands: padded dims / rows / codes contribute 0 to the dot.
        a = tl.load(z_ptr + rows[:, None] * D + (d0 + offs_d)[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(e_ptr + cols[None, :] * D + (d0 + offs_d)[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        if DOT_FP32:
            # fp32 (or mixed-dtype) operands: upcast; PREC picks exact "ieee" or "tf32".
            dot = tl.dot(a.to(tl.float32), b.to(tl.float32), dot, input_precision=PREC)
        else:
            # both bf16 (or both fp16): products are exact in fp32, accumulation is fp32.
            dot = tl.dot(a, b, dot)
    return dot


@triton.jit
def _assign_kernel(
    z_ptr,  # [M, N, D] contiguous, fp32/bf16/fp16
    e_ptr,  # [M, K, D] contiguous
    esq_ptr,  # [M, K] fp32 codebook squared norms
    idx_ptr,  # [M, N] int64 out
    dist_ptr,  # [M, N] fp32 out
    N,
    K,
    D,
    N_BUCKET,  # autotune keys only (bucketed sizes); unused in the body
    K_BUCKET,
    D_BUCKET,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    # int64 modality offsets: M*N*D may pass 2^31 even when one modality does not.
    pid_m = tl.program_id(1).to(tl.int64)
    z_ptr += pid_m * N * D
    e_ptr += pid_m * K * D
    esq_ptr += pid_m * K
    idx_ptr += pid_m * N
    dist_ptr += pid_m * N

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)

    # ||z||^2 only shifts every rank of a frame equally; it is added to the winner at the end.
    zsq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        # other=0: padded rows/dims add nothing to the sum.
        zt = tl.load(
            z_ptr + rows[:, None] * D + (d0 + offs_d)[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
        ).to(tl.float32)
        zsq += tl.sum(zt * zt, axis=1)

    best_val = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        dot = _dot_tile(z_ptr, e_ptr, rows, row_ok, cols, col_ok, D, DOT_FP32, PREC, BLOCK_N, BLOCK_K, BLOCK_D)
        # other=+inf: a code past K gets rank inf - 2*0 = inf and can never be the minimum.
        esq = tl.load(esq_ptr + cols, mask=col_ok, other=float("inf"))
        rank = esq[None, :] - 2.0 * dot
        tile_min, tile_arg = tl.min(rank, axis=1, return_indices=True, return_indices_tie_break_left=True)
        # strictly smaller only: on a tie the earlier tile (lower code index) keeps the frame.
        better = tile_min < best_val
        best_idx = tl.where(better, tile_arg + k0, best_idx)
        best_val = tl.where(better, tile_min, best_val)

    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, best_val + zsq, mask=row_ok)


def _bucket(x: int) -> int:
    """Power-of-two bucket so the autotuner re-tunes per size class, not per exact size."""
    return triton.next_power_of_2(max(int(x), 1))


_GPU_CONFIGS = [
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_D": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_D": 64}, num_warps=4, num_stages=2),
    # small-N shapes (paper: N=800 per modality) need more programs than SMs.
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_D": 32}, num_warps=2, num_stages=3),
    triton.Config({"BLOCK_N": 16, "BLOCK_K": 128, "BLOCK_D": 32}, num_warps=4, num_stages=3),
]
_INTERPRET_CONFIG = {"BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_D": 64}

_assign_kernel_tuned = triton.autotune(
    configs=_GPU_CONFIGS, key=["N_BUCKET", "K_BUCKET", "D_BUCKET", "DOT_FP32", "PREC"]
)(_assign_kernel)


def _check_pair(z: torch.Tensor, codebook: torch.Tensor, name: str) -> None:
    """Shape/dtype/device checks shared by the Triton launchers (clear messages, no silent casts)."""
    if z.dim() != 3 or codebook.dim() != 3:
        raise ValueError(
            f"{name}: expected z [M, N, D] and codebook [M, K, D], got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    if z.shape[0] != codebook.shape[0] or z.shape[2] != codebook.shape[2]:
        raise ValueError(
            f"{name}: z {tuple(z.shape)} and codebook {tuple(codebook.shape)} disagree on M or D"
        )
    if codebook.shape[1] < 1 or z.shape[2] < 1:
        raise ValueError(f"{name}: need K >= 1 codes and D >= 1 dims, got codebook {tuple(codebook.shape)}")
    for t, what in ((z, "z"), (codebook, "codebook")):
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name}: {what} must be float32, bfloat16 or float16, got {t.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"{name}: z is on {z.device} but codebook is on {codebook.device}")
    if z.device.type != "cuda" and not _interpret():
        raise RuntimeError(
            f"{name}: Triton kernels need CUDA tensors (got {z.device}); set TRITON_INTERPRET=1 to run on CPU"
        )
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    if max(num_frames * dim, num_codes * dim) >= 2**31:
        raise ValueError(f"{name}: one modality's N*D or K*D exceeds int32 indexing ({tuple(z.shape)})")


def _dot_mode(z: torch.Tensor, codebook: torch.Tensor, allow_tf32: bool) -> tuple[bool, str]:
    """(DOT_FP32, PREC): native half-precision dot only when both operands share that dtype."""
    native = z.dtype == codebook.dtype and z.dtype in (torch.bfloat16, torch.float16)
    # The Triton 3.x interpreter computes a native bf16 x bf16 tl.dot wrongly (raw bit patterns);
    # upcasting gives the same exact-product fp32 result, so the interpreter always upcasts.
    native = native and not _interpret()
    return (not native), ("tf32" if allow_tf32 else "ieee")


def assign_triton(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    allow_tf32: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per frame for all modalities in one launch.

    z [M, N, D] (fp32/bf16/fp16), codebook [M, K, D] (fp32/bf16/fp16) ->
    (idx [M, N] int64, min_dist [M, N] float32), as `assign_reference`.
    allow_tf32: fp32 dot products on TF32 tensor cores (faster on GPU, ~1e-3 relative error
    in the ranking). out: optional preallocated (idx, min_dist) to write into.
    No gradient flows (inputs are detached).
    """
    _check_pair(z, codebook, "assign_triton")
    num_mod, num_frames, dim = z.shape
    num_codes = codebook.shape[1]
    z = z.detach().contiguous()
    codebook = codebook.detach().contiguous()

    if out is None:
        idx = torch.empty((num_mod, num_frames), dtype=torch.int64, device=z.device)
        min_dist = torch.empty((num_mod, num_frames), dtype=torch.float32, device=z.device)
    else:
        idx, min_dist = out
        if idx.shape != (num_mod, num_frames) or idx.dtype != torch.int64 or not idx.is_contiguous():
            raise ValueError(f"assign_triton: out idx must be contiguous int64 [{num_mod}, {num_frames}]")
        if min_dist.shape != (num_mod, num_frames) or min_dist.dtype != torch.float32 or not min_dist.is_contiguous():
            raise ValueError(f"assign_triton: out min_dist must be contiguous float32 [{num_mod}, {num_frames}]")
    if num_frames == 0:
        return idx, min_dist

    # Once per call, fp32 (same op as the reference so the ranks share ||E||^2 bit for bit).
    cb32 = codebook.float()
    code_sq = (cb32 * cb32).sum(-1).contiguous()
    dot_fp32, prec = _dot_mode(z, codebook, allow_tf32)
    args = (z, codebook, code_sq, idx, min_dist, num_frames, num_codes, dim)
    keys = dict(N_BUCKET=_bucket(num_frames), K_BUCKET=_bucket(num_codes), D_BUCKET=_bucket(dim))
    if _interpret():
        cfg = _INTERPRET_CONFIG
        grid = (triton.cdiv(num_frames, cfg["BLOCK_N"]), num_mod)
        _assign_kernel[grid](*args, **keys, DOT_FP32=dot_fp32, PREC=prec, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(num_frames, meta["BLOCK_N"]), num_mod)  # noqa: E731
        _assign_kernel_tuned[grid](*args, **keys, DOT_FP32=dot_fp32, PREC=prec)
    return idx, min_dist
