"""assign_triton vs assign_reference: compiled on a GPU, under the Triton interpreter on the CPU
(tests/conftest.py decides which)."""

import pytest
import torch

from codaar_kernels.assign import assign_reference, squared_distances
from codaar_kernels.assign_triton import assign_triton
from codaar_kernels.utilities import record_launches, triton_device
from tests.kernel_views import strided_views

DEVICE = triton_device()


def _run_poisoned(z, codebook, **kw):
    """Launch into NaN / -1 prefilled outputs so an element the kernel skips cannot pass."""
    num_mod, num_frames = z.shape[:2]
    idx = torch.full((num_mod, num_frames), -1, dtype=torch.int64, device=z.device)
    dist = torch.full((num_mod, num_frames), float("nan"), dtype=torch.float32, device=z.device)
    out_idx, out_dist = assign_triton(z, codebook, out=(idx, dist), **kw)
    assert out_idx is idx and out_dist is dist
    assert not torch.isnan(dist).any(), "min_dist has unwritten (NaN) entries"
    assert (idx >= 0).all() and (idx < codebook.shape[1]).all(), "idx has unwritten or out-of-range entries"
    return idx, dist


def _check_near_optimal(z, codebook, idx, dist, rel_tol):
    """The chosen code is optimal up to rounding; exact index where the reference margin is large."""
    d_ref = squared_distances(z.float(), codebook.float())  # [M, N, K] fp32
    ref_idx, ref_min = assign_reference(z.float(), codebook.float())
    # rounding scale of one distance: ||z||^2 + ||E||^2 (the terms that cancel)
    scale = (z.float() ** 2).sum(-1) + (codebook.float() ** 2).sum(-1).max(-1, keepdim=True).values
    tol = rel_tol * scale + 1e-6
    chosen = d_ref.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert (chosen <= ref_min + tol).all(), f"suboptimal code, worst excess {(chosen - ref_min - tol).max()}"
    torch.testing.assert_close(dist, ref_min, rtol=0, atol=tol.max().item())
    if codebook.shape[1] > 1:
        two = d_ref.topk(2, dim=-1, largest=False).values
        clear = (two[..., 1] - two[..., 0]) > 4 * tol
        assert torch.equal(idx[clear], ref_idx[clear])


SHAPES = [
    # (M, N, K, D, z dtype, codebook dtype)
    (2, 1, 3, 16, torch.float32, torch.float32),  # N = 1
    (3, 7, 1, 200, torch.float32, torch.float32),  # K = 1, D not a power of two
    (1, 800, 800, 16, torch.float32, torch.float32),  # several N blocks and K tiles
    (2, 3000, 3, 16, torch.float32, torch.float32),  # big N, tiny K
    (1, 7, 8192, 16, torch.float32, torch.float32),  # big K (64 tiles), tiny N
    (2, 7, 3, 512, torch.float32, torch.float32),  # big D
    (2, 50, 300, 200, torch.float32, torch.float32),  # masked D chunk + partial K tile
    (3, 7, 800, 200, torch.bfloat16, torch.float32),  # bf16 latents, fp32 codebook
    (1, 800, 3, 256, torch.bfloat16, torch.float32),
    (2, 33, 130, 24, torch.bfloat16, torch.bfloat16),  # both bf16: native bf16 dot
]


@pytest.mark.parametrize("M,N,K,D,zdt,edt", SHAPES)
def test_random_matches_reference(M, N, K, D, zdt, edt):
    g = torch.Generator().manual_seed(1000 * M + N + K + D)
    z = torch.randn(M, N, D, generator=g).to(DEVICE, zdt)
    codebook = torch.randn(M, K, D, generator=g).to(DEVICE, edt)
    idx, dist = _run_poisoned(z, codebook)
    _check_near_optimal(z, codebook, idx, dist, rel_tol=2e-6)


def test_separated_codes_exact():
    g = torch.Generator().manual_seed(1)
    M, N, K, D = 3, 500, 300, 40
    codebook = 10 * torch.randn(M, K, D, generator=g)
    target = torch.randint(0, K, (M, N), generator=g)
    z = codebook.gather(1, target.unsqueeze(-1).expand(M, N, D)) + 0.01 * torch.randn(M, N, D, generator=g)
    idx, dist = _run_poisoned(z.to(DEVICE), codebook.to(DEVICE))
    assert torch.equal(idx.cpu(), target)
    ref_idx, ref_min = assign_reference(z, codebook)
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(dist.cpu(), ref_min, rtol=1e-4, atol=1e-2)


def test_duplicate_codewords_lowest_index_wins():
    g = torch.Generator().manual_seed(2)
    M, N, K, D = 2, 70, 800, 16
    codebook = 5 * torch.randn(M, K, D, generator=g)
    # same codeword at 3 (first tile), 4 (same tile) and 700 (a later tile); frames sit on it
    codebook[:, 4] = codebook[:, 3]
    codebook[:, 700] = codebook[:, 3]
    z = codebook[:, 3:4].expand(M, N, D) + 0.01 * torch.randn(M, N, D, generator=g)
    idx, _ = _run_poisoned(z.to(DEVICE), codebook.to(DEVICE))
    assert (idx == 3).all()
    assert torch.equal(idx.cpu(), assign_reference(z, codebook)[0])


def test_all_codes_identical():
    z = torch.randn(2, 9, 16)
    codebook = torch.randn(2, 1, 16).expand(2, 300, 16)  # stride-0 view, read in place
    idx, dist = _run_poisoned(z.to(DEVICE), codebook.to(DEVICE))
    assert (idx == 0).all()
    torch.testing.assert_close(dist.cpu(), assign_reference(z, codebook.contiguous())[1], rtol=1e-5, atol=1e-5)


def test_equidistant_frames_integer_data():
    # Small integers: every distance is exact in fp32, so tie-breaking must match torch exactly.
    g = torch.Generator().manual_seed(3)
    M, N, K, D = 3, 400, 300, 16
    z = torch.randint(-2, 3, (M, N, D), generator=g).float()
    codebook = torch.randint(-2, 3, (M, K, D), generator=g).float()
    # frame 0: equidistant to +e0 at code 5 and -e0 at code 200 (different K tiles)
    z[:, 0] = 0
    codebook[:, 5] = 0
    codebook[:, 5, 0] = 1
    codebook[:, 200] = 0
    codebook[:, 200, 0] = -1
    idx, dist = _run_poisoned(z.to(DEVICE), codebook.to(DEVICE))
    ref_idx, ref_min = assign_reference(z, codebook)
    assert torch.equal(idx.cpu(), ref_idx)
    assert torch.equal(dist.cpu(), ref_min)
    d = squared_distances(z, codebook)
    assert (d == d.min(-1, keepdim=True).values).sum(-1).gt(1).float().mean() > 0.05, "test needs many ties"
    assert (idx[:, 0] == 5).all()


def test_unused_far_codes_and_noncontiguous_inputs():
    g = torch.Generator().manual_seed(4)
    M, N, K, D = 2, 40, 50, 24
    codebook = torch.randn(M, K, D, generator=g)
    codebook[:, 10:30] += 1000.0  # never chosen
    z_t = torch.randn(M, D, N, generator=g).to(DEVICE)
    z = z_t.transpose(1, 2)  # [M, N, D] non-contiguous view
    idx, dist = _run_poisoned(z, codebook.to(DEVICE))
    assert not ((idx >= 10) & (idx < 30)).any()
    _check_near_optimal(z, codebook.to(DEVICE), idx, dist, rel_tol=2e-6)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_strided_views_are_read_in_place(layout):
    g = torch.Generator().manual_seed(6)
    z, codebook = strided_views(3, 70, 130, 40, g, layout, DEVICE)
    with record_launches(run=True) as launches:
        idx, dist = _run_poisoned(z, codebook)
    (launch,) = launches
    for given, view in zip(launch.args[:2], (z, codebook)):  # the views themselves, not copies
        assert given.data_ptr() == view.data_ptr() and given.stride() == view.stride()
    _check_near_optimal(z, codebook, idx, dist, rel_tol=2e-6)
    ref_idx, ref_min = assign_reference(z, codebook)  # the reference on the same views
    assert (idx == ref_idx).float().mean() > 0.99
    torch.testing.assert_close(dist, ref_min, rtol=1e-5, atol=1e-4)


def test_offsets_past_int32_are_refused():
    # meta tensors: the strides of a huge view, no memory behind them
    z = torch.empty_strided((2, 3, 16), (16, 2**30, 1), device="meta")
    codebook = torch.empty(2, 4, 16, device="meta")
    with pytest.raises(ValueError, match=r"z \(2, 3, 16\) with strides .* past int32"):
        assign_triton(z, codebook)


def test_tf32_option_is_near_optimal():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 60, 32, generator=g).to(DEVICE)
    codebook = torch.randn(2, 90, 32, generator=g).to(DEVICE)
    idx, dist = _run_poisoned(z, codebook, allow_tf32=True)
    _check_near_optimal(z, codebook, idx, dist, rel_tol=5e-3)  # tf32: ~10-bit mantissa products


def test_default_allocation_and_empty():
    z = torch.randn(1, 5, 16, device=DEVICE)
    codebook = torch.randn(1, 4, 16, device=DEVICE)
    idx, dist = assign_triton(z, codebook)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32 and idx.shape == (1, 5)
    assert torch.equal(idx, assign_reference(z, codebook)[0])
    idx0, dist0 = assign_triton(torch.randn(2, 0, 16, device=DEVICE), torch.randn(2, 4, 16, device=DEVICE))
    assert idx0.shape == (2, 0) and dist0.shape == (2, 0)


def test_bad_inputs_raise():
    z = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="disagree"):
        assign_triton(z, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="disagree"):
        assign_triton(z, torch.randn(3, 4, 16))
    with pytest.raises(ValueError, match=r"\[M, N, D\]"):
        assign_triton(z[0], torch.randn(4, 16))
    with pytest.raises(TypeError, match="float32"):
        assign_triton(z.double(), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="K >= 1"):
        assign_triton(z, torch.randn(2, 0, 16))
    with pytest.raises(TypeError, match="out idx must be int64"):
        assign_triton(z, torch.randn(2, 4, 16), out=(torch.empty(2, 5, dtype=torch.int32), torch.empty(2, 5)))


@pytest.mark.parametrize("fma", [True, False], ids=["fma-configs", "mma-configs"])
def test_every_autotune_config_matches_reference(fma, monkeypatch):
    # The configs production autotunes over (compiled in test_kernel_compiled.py), each run here on
    # its own (under the interpreter: the tile logic and masks, whatever the block sizes); D = 64
    # divides every BLOCK_D (no D mask), D = 40 does not.
    from codaar_kernels import assign_triton as module

    g = torch.Generator().manual_seed(21)
    for config in module.autotune_configs(fma):
        monkeypatch.setattr(module, "_INTERPRET_CONFIG", dict(config.kwargs))
        for dim in (64, 40):
            z = torch.randn(2, 50, dim, generator=g).to(DEVICE)
            codebook = torch.randn(2, 70, dim, generator=g).to(DEVICE)
            idx, dist = _run_poisoned(z, codebook, allow_tf32=not fma)
            _check_near_optimal(z, codebook, idx, dist, rel_tol=2e-6 if fma else 5e-3)


@pytest.mark.parametrize("dim", [48, 40, 256])
def test_even_d_is_chosen_per_autotune_config(dim, monkeypatch):
    # The autotuned launch leaves EVEN_D to the kernel's triton.heuristics, which sees each config's
    # BLOCK_D: with D = 48 the BLOCK_D = 16 configs drop the D mask and the BLOCK_D = 32 ones keep it.
    # Recorded, not run (the autotuner times configs on a GPU); expanded per config as Triton's
    # Autotuner -> Heuristics -> JITFunction chain does, and as ahead_of_time compiles them.
    from codaar_kernels import ahead_of_time as aot
    from codaar_kernels import assign_triton as module

    monkeypatch.setattr(module, "interpreter_enabled", lambda: False)  # the production (autotuned) launch
    with record_launches() as launches:
        assign_triton(torch.zeros(2, 50, dim, device=DEVICE), torch.zeros(2, 70, dim, device=DEVICE))
    (launch,) = launches
    assert "EVEN_D" not in launch.kwargs
    expanded = aot._expand(launch)
    assert len(expanded) == len(module.autotune_configs(fma=True))
    even = [kwargs["EVEN_D"] for _, kwargs in expanded]
    assert even == [dim % kwargs["BLOCK_D"] == 0 for _, kwargs in expanded]
    assert set(even) == ({True, False} if dim == 48 else {dim == 256})

