"""soft_usage_triton (forward + backward) vs soft_usage_reference and its autograd gradient; the
forward's assignment vs assign_triton and the reference. Compiled on a GPU, under the Triton
interpreter on the CPU (tests/conftest.py decides which).
"""

import pytest
import torch

from codaar_kernels.assign import assign_reference, soft_usage_reference
from codaar_kernels.assign_triton import assign_triton
from codaar_kernels.soft_usage_triton import (
    assign_with_soft_usage_triton,
    soft_usage_backward,
    soft_usage_forward,
    soft_usage_triton,
)
from codaar_kernels.utilities import record_launches, triton_device
from tests.kernel_views import strided_views

DEVICE = triton_device()


def _reference(z, codebook, T, weight):
    """(P, dz) from the eager reference in fp32 for the loss sum(P * weight)."""
    zr = z.detach().float().requires_grad_()
    probs = soft_usage_reference(zr, codebook.float(), T)
    (probs * weight).sum().backward()
    return probs.detach(), zr.grad


def _poisoned_forward_backward(z, codebook, T, weight):
    """Raw launchers into NaN / -1 prefilled outputs: every P, lse, idx, min_dist, r and dz element
    must be written. Returns (P, dz, idx, min_dist)."""
    num_mod, num_frames, dim = z.shape
    B, K = num_frames // T, codebook.shape[1]
    nan = float("nan")
    p_out = torch.full((num_mod, B, K), nan, device=z.device)
    lse_out = torch.full((num_mod, num_frames), nan, device=z.device)
    idx_out = torch.full((num_mod, num_frames), -1, dtype=torch.int64, device=z.device)
    dist_out = torch.full((num_mod, num_frames), nan, device=z.device)
    probs, lse, idx, dist = soft_usage_forward(z, codebook, T, out=p_out, lse_out=lse_out, idx_out=idx_out,
                                               dist_out=dist_out)
    assert probs is p_out and lse is lse_out and idx is idx_out and dist is dist_out
    assert not torch.isnan(probs).any() and not torch.isnan(lse).any() and not torch.isnan(dist).any()
    assert (idx >= 0).all() and (idx < K).all()
    dz_out = torch.full((num_mod, num_frames, dim), nan, dtype=z.dtype, device=z.device)
    row_out = torch.full((num_mod, num_frames), nan, device=z.device)
    dz = soft_usage_backward(z, codebook, T, lse, weight, out=dz_out, row_out=row_out)
    assert dz is dz_out
    assert not torch.isnan(dz).any() and not torch.isnan(row_out).any()
    return probs, dz, idx, dist


SHAPES = [
    # (M, N, K, D, T, z dtype)
    (1, 10, 1, 16, 10, torch.float32),  # K = 1: P == 1, zero gradient
    (2, 10, 3, 200, 10, torch.float32),  # one sample, D not a power of two
    (3, 80, 800, 16, 10, torch.float32),  # several K tiles, partial last tile
    (2, 3000, 3, 16, 10, torch.float32),  # 300 samples, several sample/frame blocks
    (1, 10, 2048, 16, 10, torch.float32),  # many K tiles
    (2, 20, 40, 512, 10, torch.float32),  # big D: two dz column chunks
    (2, 70, 50, 32, 7, torch.float32),  # T = 7
    (1, 7, 33, 24, 1, torch.float32),  # T = 1, N = 7
    (2, 70, 130, 200, 10, torch.bfloat16),  # bf16 latents
]


@pytest.mark.parametrize("M,N,K,D,T,zdt", SHAPES)
def test_forward_backward_match_reference(M, N, K, D, T, zdt):
    g = torch.Generator().manual_seed(7 * M + N + K + D + T)
    z = torch.randn(M, N, D, generator=g).to(DEVICE, zdt)
    codebook = (0.5 * torch.randn(M, K, D, generator=g)).to(DEVICE)
    weight = torch.randn(M, N // T, K, generator=g).to(DEVICE)
    ref_p, ref_dz = _reference(z, codebook, T, weight)

    probs, dz, idx, dist = _poisoned_forward_backward(z, codebook, T, weight)
    assert probs.dtype == torch.float32 and dz.dtype == zdt
    # DQA's first pass is the assign kernel itself: the same indices and distances, bit for bit.
    assign_idx, assign_dist = assign_triton(z, codebook)
    assert torch.equal(idx, assign_idx) and torch.equal(dist, assign_dist)
    # inputs are the same bf16 values on both sides, the math is fp32 on both sides;
    # bf16 only adds the final rounding of dz to bf16.
    torch.testing.assert_close(probs, ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]), rtol=1e-5, atol=1e-5)
    scale = ref_dz.abs().max().item() + 1e-12
    if zdt == torch.float32:
        torch.testing.assert_close(dz, ref_dz, rtol=1e-4, atol=1e-5 * scale)
    else:
        torch.testing.assert_close(dz.float(), ref_dz, rtol=1e-2, atol=1e-2 * scale)


def test_autograd_function_and_constant_codebook():
    g = torch.Generator().manual_seed(11)
    M, N, K, D, T = 2, 40, 70, 24, 10
    z = torch.randn(M, N, D, generator=g).to(DEVICE).transpose(0, 1).contiguous().transpose(0, 1)  # strided
    z.requires_grad_()
    codebook = torch.nn.Parameter(torch.randn(M, K, D, generator=g).to(DEVICE))
    weight = torch.randn(M, N // T, K, generator=g).to(DEVICE)
    probs = soft_usage_triton(z, codebook, T)
    (probs * weight).sum().backward()
    ref_p, ref_dz = _reference(z, codebook.detach(), T, weight)
    torch.testing.assert_close(probs.detach(), ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, ref_dz, rtol=1e-4, atol=1e-5 * ref_dz.abs().max().item())
    assert codebook.grad is None  # constant buffer by design
    # upstream gradient that is an expanded (stride-0) tensor
    z.grad = None
    soft_usage_triton(z, codebook.detach(), T).sum().backward()
    assert z.grad.abs().max() < 1e-4  # sum_k P = 1 per sample: the gradient of the total is ~0


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_strided_views_are_read_in_place(layout):
    # z and codebook as views (tests.kernel_views.strided_views), the upstream gradient a transposed
    # or expanded view: every kernel gets the views themselves, and matches the reference on them.
    g = torch.Generator().manual_seed(15)
    M, B, T, K, D = 3, 7, 10, 70, 40
    z, codebook = strided_views(M, B * T, K, D, g, layout, DEVICE)
    if layout == "expanded":
        weight = torch.randn(1, 1, K, generator=g).to(DEVICE).expand(M, B, K)
    else:
        weight = torch.randn(M, K, B, generator=g).to(DEVICE).transpose(1, 2)
    ref_p, ref_dz = _reference(z, codebook, T, weight)
    with record_launches(run=True) as launches:
        probs, dz, _, _ = _poisoned_forward_backward(z, codebook, T, weight)
    assert len(launches) == 4  # assign with lse, forward, backward row and dz
    for launch in launches:
        for given, view in zip(launch.args[:2], (z, codebook)):
            assert given.data_ptr() == view.data_ptr() and given.stride() == view.stride()
    for launch in launches[2:]:
        assert launch.args[5].data_ptr() == weight.data_ptr() and launch.args[5].stride() == weight.stride()
    torch.testing.assert_close(probs, ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dz, ref_dz, rtol=1e-4, atol=1e-5 * ref_dz.abs().max().item())


def test_assign_with_soft_usage_indices_are_the_references():
    # Frames near codewords (clear margins): the indices must be exactly the reference's, and the
    # fused forward's assignment is the assign kernel's, bit for bit, with gradients still flowing.
    g = torch.Generator().manual_seed(14)
    M, K, D, T, B = 3, 300, 40, 10, 9
    codebook = torch.randn(M, K, D, generator=g)
    target = torch.randint(0, K, (M, B * T), generator=g)
    # d(target) ~ 4, d(other) ~ 80: a margin far above fp32 rounding, a softmax far from one-hot
    z = codebook.gather(1, target.unsqueeze(-1).expand(-1, -1, D)) + 0.3 * torch.randn(M, B * T, D, generator=g)
    z = z.to(DEVICE).requires_grad_()
    idx, dist, probs = assign_with_soft_usage_triton(z, codebook.to(DEVICE), T)
    ref_idx, ref_dist = assign_reference(z.detach().cpu(), codebook)
    assert torch.equal(idx.cpu(), ref_idx) and torch.equal(idx.cpu(), target)
    torch.testing.assert_close(dist.cpu(), ref_dist, rtol=1e-4, atol=1e-3)
    assign_idx, assign_dist = assign_triton(z, codebook.to(DEVICE))
    assert torch.equal(idx, assign_idx) and torch.equal(dist, assign_dist)
    assert not idx.requires_grad and not dist.requires_grad and probs.requires_grad
    (probs.square().sum()).backward()
    ref_p, ref_dz = _reference(z, codebook.to(DEVICE), T, 2 * soft_usage_reference(z.detach().float(),
                                                                                  codebook.to(DEVICE), T))
    torch.testing.assert_close(probs.detach(), ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, ref_dz, rtol=1e-4, atol=1e-5 * ref_dz.abs().max().item())


def test_zero_distance_has_zero_sqrt_gradient():
    # Integer data with frames equal to codes: d == 0 exactly on both sides, so the neg_safe_sqrt
    # branch (value 0, gradient 0) is taken identically by kernel and reference.
    g = torch.Generator().manual_seed(12)
    M, N, K, D, T = 2, 30, 20, 16, 10
    codebook = torch.randint(-2, 3, (M, K, D), generator=g).float()
    pick = torch.randint(0, K, (M, N), generator=g)
    z = codebook.gather(1, pick.unsqueeze(-1).expand(M, N, D)).clone()
    z[:, ::3] += 1.0  # some frames off-code
    weight = torch.randn(M, N // T, K, generator=g)
    ref_p, ref_dz = _reference(z, codebook, T, weight)
    probs, dz, idx, dist = _poisoned_forward_backward(z.to(DEVICE), codebook.to(DEVICE), T, weight.to(DEVICE))
    ref_idx, ref_dist = assign_reference(z, codebook)  # integer data: every distance exact, ties decided alike
    assert torch.equal(idx.cpu(), ref_idx) and torch.equal(dist.cpu(), ref_dist)
    torch.testing.assert_close(probs.cpu(), ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dz.cpu(), ref_dz, rtol=1e-4, atol=1e-5 * ref_dz.abs().max().item())


def test_far_codes_do_not_underflow():
    # distances ~1e4: sqrt ~100, exp(-100) underflows without the max shift of the softmax
    g = torch.Generator().manual_seed(13)
    z = (30 * torch.randn(1, 20, 16, generator=g)).to(DEVICE)
    codebook = (30 * torch.randn(1, 50, 16, generator=g)).to(DEVICE)
    weight = torch.randn(1, 2, 50, generator=g).to(DEVICE)
    ref_p, ref_dz = _reference(z, codebook, 10, weight)
    probs, dz, _, _ = _poisoned_forward_backward(z, codebook, 10, weight)
    torch.testing.assert_close(probs, ref_p, rtol=1e-4, atol=1e-6)
    # ||z||^2 + ||E||^2 ~ 3e4 cancels to d: fp32 rounding of d (~3e-3, different on the two
    # sides) moves p by ~1e-5 relative, so the gradient is compared at 1e-4 of its scale.
    torch.testing.assert_close(dz, ref_dz, rtol=1e-3, atol=1e-4 * ref_dz.abs().max().item())


def test_bad_inputs_raise():
    z = torch.randn(2, 25, 16)
    with pytest.raises(ValueError, match="multiple of T=10"):
        soft_usage_triton(z, torch.randn(2, 4, 16), 10)
    with pytest.raises(ValueError, match="positive int"):
        soft_usage_triton(z, torch.randn(2, 4, 16), 0)
    with pytest.raises(ValueError, match="disagree"):
        soft_usage_triton(z, torch.randn(2, 4, 8), 5)
    with pytest.raises(TypeError, match="float32"):
        soft_usage_triton(z.double(), torch.randn(2, 4, 16), 5)
    # the backward takes the forward's lse and autograd's float32 dP as they are: nothing is cast
    codebook, lse, grad = torch.randn(2, 4, 16), torch.zeros(2, 25), torch.zeros(2, 5, 4)
    with pytest.raises(TypeError, match="lse must be float32, got torch.float64"):
        soft_usage_backward(z, codebook, 5, lse.double(), grad)
    with pytest.raises(ValueError, match="lse must be contiguous"):
        soft_usage_backward(z, codebook, 5, torch.zeros(25, 2).t(), grad)
    with pytest.raises(TypeError, match="grad_p must be float32, got torch.bfloat16"):
        soft_usage_backward(z, codebook, 5, lse, grad.bfloat16())


@pytest.mark.parametrize("tier", ["few-frames", "many-frames-fma", "many-frames-mma"])
def test_production_launch_settings_match_reference(tier, monkeypatch):
    # The block sizes production launches with (both tiers; compiled in test_kernel_compiled.py),
    # run here instead of the interpreter's own (under the interpreter: the tile logic and masks).
    from codaar_kernels import soft_usage_triton as module

    if DEVICE == "cpu":
        monkeypatch.setattr(module, "interpreter_enabled", lambda: False)  # _configs: production settings
    if tier != "few-frames":
        monkeypatch.setattr(module, "MANY_FRAMES", 1)
    fma = tier != "many-frames-mma"
    g = torch.Generator().manual_seed(22)
    M, N, K, D, T = 2, 70, 130, 40, 7
    z = torch.randn(M, N, D, generator=g).to(DEVICE)
    codebook = (0.5 * torch.randn(M, K, D, generator=g)).to(DEVICE)
    weight = torch.randn(M, N // T, K, generator=g).to(DEVICE)
    ref_p, ref_dz = _reference(z, codebook, T, weight)
    if fma:
        probs, dz, _, _ = _poisoned_forward_backward(z, codebook, T, weight)
    else:  # the tensor-core tier is chosen for tf32 (fp32 under the interpreter)
        probs, lse = soft_usage_forward(z, codebook, T, allow_tf32=True)[:2]
        dz = soft_usage_backward(z, codebook, T, lse, weight, allow_tf32=True)
    # tf32 on a GPU: ~1e-3 relative error in the distances, ~1e-2 in p and dz; exact fp32 otherwise
    loose = not fma and DEVICE == "cuda"
    torch.testing.assert_close(probs, ref_p, rtol=1e-2 if loose else 1e-5, atol=1e-4 if loose else 1e-6)
    scale = ref_dz.abs().max().item()
    torch.testing.assert_close(dz, ref_dz, rtol=5e-2 if loose else 1e-4, atol=(5e-2 if loose else 1e-5) * scale)
