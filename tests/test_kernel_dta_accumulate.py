"""Triton DTA accumulation (atomic and deterministic paths) against the eager reference. Compiled on
a GPU, under the Triton interpreter on the CPU (tests/conftest.py decides which).
"""

import pytest
import torch

from codaar_kernels.dta_accumulate import dta_accumulate_reference
from codaar_kernels.dta_accumulate_triton import dta_accumulate_triton
from codaar_kernels.utilities import triton_device

DEVICE = triton_device()
WEIGHTS = {1: (1.0, 0.0), 2: (0.75, 0.25), 3: (0.6, 0.2)}  # paper defaults (self, cross)


def _inputs(num_mod, num_frames, num_codes, dim, dtype, seed, idx_mode="random"):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_mod, num_frames, dim, generator=gen).to(dtype)
    if idx_mode == "one_code":  # every frame of every modality on one code
        idx = torch.full((num_mod, num_frames), num_codes - 1, dtype=torch.int64)
    elif idx_mode == "few_codes":  # most codes empty, a few very popular
        idx = torch.randint(0, min(num_codes, 3), (num_mod, num_frames), generator=gen) * max(1, num_codes // 3)
        idx = idx.clamp(max=num_codes - 1)
    else:
        idx = torch.randint(0, num_codes, (num_mod, num_frames), generator=gen)
    return z.to(DEVICE), idx.to(DEVICE)


def _poisoned(num_mod, num_codes, dim):
    return (
        torch.full((num_mod, num_codes, dim), float("nan"), device=DEVICE),
        torch.full((num_mod, num_codes), float("nan"), device=DEVICE),
    )


def _check_close(sums, counts, z, idx, num_codes, self_w, cross_w):
    # Reference on the fp32 view of the latents (the kernels accumulate in fp32 whatever z is),
    # computed in float64 so the tolerance only covers the kernels' fp32 rounding.
    ref_sums, ref_counts = dta_accumulate_reference(z.double(), idx, num_codes, self_w, cross_w)
    assert sums.dtype == torch.float32 and counts.dtype == torch.float32
    assert torch.isfinite(sums).all() and torch.isfinite(counts).all(), "some output element was not written"
    assert torch.equal(counts, ref_counts.float())
    # fp32 error of a sum of n terms of size ~|x|: a few ulp times n*|x|.
    scale = dta_accumulate_reference(z.double().abs(), idx, num_codes, abs(self_w), abs(cross_w))[0]
    err = (sums.double() - ref_sums).abs()
    assert (err <= 1e-6 * scale + 1e-6).all(), f"max err {err.max().item()}"


# (M, N, K, D, latent dtype, idx mode): N in {1, 7, 800, 3000}, K in {1, 3, 800, 8192}, awkward D
ATOMIC_CASES = [
    (2, 1, 1, 16, torch.float32, "random"),
    (3, 7, 3, 200, torch.bfloat16, "random"),
    (3, 800, 800, 200, torch.float32, "random"),
    (2, 800, 800, 256, torch.bfloat16, "random"),
    (3, 3000, 800, 16, torch.float32, "random"),
    (1, 3000, 3, 256, torch.float32, "random"),
    (3, 7, 8192, 512, torch.float32, "random"),
    (2, 800, 8192, 16, torch.float32, "random"),
    (3, 3000, 800, 16, torch.float32, "one_code"),
    (2, 800, 800, 200, torch.float32, "few_codes"),
]

DETERMINISTIC_CASES = [  # smaller: the segmented kernel is slow in the interpreter
    (2, 1, 1, 16, torch.float32, "random"),
    (3, 7, 3, 200, torch.bfloat16, "random"),
    (3, 300, 64, 200, torch.float32, "random"),
    (1, 800, 3, 256, torch.float32, "random"),
    (2, 800, 200, 16, torch.bfloat16, "random"),
    (1, 7, 8192, 16, torch.float32, "random"),
    (3, 800, 800, 16, torch.float32, "one_code"),
    (2, 800, 800, 16, torch.float32, "few_codes"),
]


def _seed(case):
    m, n, k, d, _, _ = case
    return 1000003 * m + 10007 * n + 101 * k + d  # stable across processes (unlike hash())


def _case_id(case):
    m, n, k, d, dt, mode = case
    return f"M{m}-N{n}-K{k}-D{d}-{str(dt).split('.')[-1]}-{mode}"


@pytest.mark.parametrize("case", ATOMIC_CASES, ids=_case_id)
def test_atomic_matches_reference(case):
    num_mod, num_frames, num_codes, dim, dtype, mode = case
    z, idx = _inputs(num_mod, num_frames, num_codes, dim, dtype, seed=_seed(case), idx_mode=mode)
    self_w, cross_w = WEIGHTS[num_mod]
    out_sums, out_counts = _poisoned(num_mod, num_codes, dim)
    sums, counts = dta_accumulate_triton(z, idx, num_codes, self_w, cross_w, out_sums=out_sums, out_counts=out_counts)
    assert sums.data_ptr() == out_sums.data_ptr() and counts.data_ptr() == out_counts.data_ptr()
    _check_close(sums, counts, z, idx, num_codes, self_w, cross_w)


@pytest.mark.parametrize("case", DETERMINISTIC_CASES, ids=_case_id)
def test_deterministic_bit_identical_and_matches_reference(case):
    num_mod, num_frames, num_codes, dim, dtype, mode = case
    z, idx = _inputs(num_mod, num_frames, num_codes, dim, dtype, seed=_seed(case) + 1, idx_mode=mode)
    self_w, cross_w = WEIGHTS[num_mod]
    out_sums, out_counts = _poisoned(num_mod, num_codes, dim)
    sums, counts = dta_accumulate_triton(
        z, idx, num_codes, self_w, cross_w, deterministic=True, out_sums=out_sums, out_counts=out_counts
    )
    _check_close(sums, counts, z, idx, num_codes, self_w, cross_w)
    again_sums, again_counts = dta_accumulate_triton(z, idx, num_codes, self_w, cross_w, deterministic=True)
    assert torch.equal(sums, again_sums) and torch.equal(counts, again_counts)


@pytest.mark.parametrize("deterministic", [False, True])
def test_weights_int32_idx_and_strided_latents(deterministic):
    # non-default weights (cross = 0 and cross != 0 with M = 1), int32 indices, a non-contiguous z
    num_mod, num_frames, num_codes, dim = 3, 300, 50, 40
    z_full, idx = _inputs(num_mod, num_frames, num_codes, 2 * dim, torch.float32, seed=7)
    z = z_full[..., ::2]
    assert not z.is_contiguous()
    for self_w, cross_w in [(1.0, 0.0), (0.5, 0.3)]:
        sums, counts = dta_accumulate_triton(z, idx.int(), num_codes, self_w, cross_w, deterministic=deterministic)
        _check_close(sums, counts, z, idx, num_codes, self_w, cross_w)
    sums, counts = dta_accumulate_triton(z[:1], idx[:1], num_codes, 0.7, 0.3, deterministic=deterministic)
    _check_close(sums, counts, z[:1], idx[:1], num_codes, 0.7, 0.3)


@pytest.mark.parametrize("deterministic", [False, True])
def test_no_frames_gives_zeros(deterministic):
    out_sums, out_counts = _poisoned(2, 5, 16)
    z = torch.empty(2, 0, 16, device=DEVICE)
    idx = torch.empty(2, 0, dtype=torch.int64, device=DEVICE)
    sums, counts = dta_accumulate_triton(z, idx, 5, 0.75, 0.25, deterministic=deterministic,
                                         out_sums=out_sums, out_counts=out_counts)
    assert torch.equal(sums, torch.zeros_like(sums)) and torch.equal(counts, torch.zeros_like(counts))


def test_launcher_rejects_bad_inputs():
    z = torch.randn(2, 5, 16, device=DEVICE)
    idx = torch.zeros(2, 5, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="z must be"):
        dta_accumulate_triton(z[0], idx, 4, 0.75, 0.25)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        dta_accumulate_triton(z.double(), idx, 4, 0.75, 0.25)
    with pytest.raises(ValueError, match="idx must have shape"):
        dta_accumulate_triton(z, idx[:, :3], 4, 0.75, 0.25)
    with pytest.raises(TypeError, match="int32 or int64"):
        dta_accumulate_triton(z, idx.float(), 4, 0.75, 0.25)
    with pytest.raises(ValueError, match="out_sums"):
        dta_accumulate_triton(z, idx, 4, 0.75, 0.25, out_sums=torch.empty(2, 4, 8, device=DEVICE))
    with pytest.raises(TypeError, match="out_counts"):
        dta_accumulate_triton(z, idx, 4, 0.75, 0.25, out_counts=torch.empty(2, 4, dtype=torch.float64, device=DEVICE))
