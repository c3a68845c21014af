"""Each equation of the quantizer on a tiny case whose expected numbers were worked out by hand
(the derivations are in the comments), not produced by running the code."""

from __future__ import annotations

import math

import pytest
import torch

import codaar_kernels as ops
from codaar.quantizer import CrossModalQuantizer

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


# ------------------------------------------------------------------------------------ Eq. 3
def test_assignment_picks_nearest_code_and_lowest_index_on_ties():
    codebook = t([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])  # M=1, K=3, D=2
    z = t([[[2.0, 1.0], [0.5, 1.5], [1.0, 0.0], [1.0, 1.0]]])
    idx, dist = ops.assign_reference(z, codebook)
    # [2,1]:   d = 5, 1, 5          -> code 1, d 1
    # [.5,1.5]: d = 2.5, 4.5, 0.5   -> code 2, d 0.5
    # [1,0]:   d = 1, 1, 5  (tie)   -> code 0, d 1
    # [1,1]:   d = 2, 2, 2  (tie)   -> code 0, d 2
    assert idx.tolist() == [[1, 2, 0, 0]]
    assert dist.tolist() == [[1.0, 0.5, 1.0, 2.0]]


# ------------------------------------------------------------------------------- soft usage
def test_soft_usage_is_time_mean_of_softmax_of_negative_distance():
    codebook = t([[[0.0], [3.0]]])  # M=1, K=2, D=1
    z = t([[[0.0], [1.5]]])  # one sample, T=2
    usage = ops.soft_usage_reference(z, codebook, frames_per_sample=2)
    # frame 0: sqrt(d) = (0, 3)     -> softmax(-(0, 3)) = (s, 1-s), s = 1/(1+e^-3)
    # frame 1: sqrt(d) = (1.5, 1.5) -> (0.5, 0.5)
    s = 1.0 / (1.0 + math.exp(-3.0))
    expected = t([[[(s + 0.5) / 2, (1 - s + 0.5) / 2]]])
    torch.testing.assert_close(usage, expected, rtol=1e-12, atol=1e-12)


def test_soft_usage_has_finite_gradient_at_zero_distance():
    codebook = t([[[1.0, 2.0], [5.0, 5.0]]])
    z = t([[[1.0, 2.0]]]).requires_grad_()  # exactly on code 0: d = 0, the authors' sqrt would give NaN grads
    usage = ops.soft_usage_reference(z, codebook, frames_per_sample=1)
    (grad,) = torch.autograd.grad(usage[0, 0, 1], z)
    assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------ Eq. 4
def test_dta_sums_mix_own_and_same_time_partner_latents():
    z = t([[[1.0], [2.0]], [[10.0], [20.0]], [[100.0], [200.0]]])  # v, a, t; N=2 frames, D=1
    idx = torch.tensor([[0, 0], [1, 0], [1, 1]])
    sums, counts = ops.dta_accumulate_reference(z, idx, num_codes=2, self_weight=0.6, cross_weight=0.2)
    # v, code 0, frames 0 and 1: 0.6*(1+2) + 0.2*((10+100) + (20+200)) = 1.8 + 66 = 67.8
    # a, code 0, frame 1: 0.6*20 + 0.2*(2+200) = 52.4;   a, code 1, frame 0: 0.6*10 + 0.2*(1+100) = 26.2
    # t, code 1, frames 0 and 1: 0.6*(100+200) + 0.2*((1+10) + (2+20)) = 186.6
    torch.testing.assert_close(sums.squeeze(-1), t([[67.8, 0.0], [52.4, 26.2], [0.0, 186.6]]))
    assert counts.tolist() == [[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]]


def test_dta_off_is_plain_own_sum():
    z = t([[[1.0], [2.0]], [[10.0], [20.0]]])
    idx = torch.tensor([[0, 0], [1, 0]])
    sums, _ = ops.dta_accumulate_reference(z, idx, num_codes=2, self_weight=1.0, cross_weight=0.0)
    assert sums.squeeze(-1).tolist() == [[3.0, 0.0], [20.0, 10.0]]


# ------------------------------------------------------------------------------------ Eq. 5
def ema_step(laplace: bool):
    codebook = torch.zeros(1, 2, 1, dtype=F64)
    ema_sum = t([[[4.0], [1.0]]])
    ema_count = t([[1.0, 0.0]])
    unused = torch.tensor([-1, -1])
    sums, counts = t([[[6.0], [0.0]]]), t([[3.0, 0.0]])
    ops.ema_csa_update_reference(
        codebook, ema_sum, ema_count, unused, sums, counts, ops.EmaCsaConfig(
            decay=0.5, eps=0.1, laplace_smoothing=laplace, csa_order=None, csa_persistent=False, dead_after=300,
            active_window=100),
    )
    return codebook, ema_sum, ema_count


def test_ema_update_with_laplace_smoothing_as_in_authors_code():
    codebook, ema_sum, ema_count = ema_step(laplace=True)
    # C = 0.5*(1, 0) + 0.5*(3, 0) = (2, 0); total 2; smoothed (2.1, 0.1) / (2 + 2*0.1) * 2 = (21/11, 1/11)
    # W = 0.5*(4, 1) + 0.5*(6, 0) = (5, 0.5);  E = W / C = (55/21, 5.5)
    torch.testing.assert_close(ema_count, t([[21 / 11, 1 / 11]]))
    torch.testing.assert_close(ema_sum.flatten(), t([5.0, 0.5]))
    torch.testing.assert_close(codebook.flatten(), t([55 / 21, 5.5]))


def test_ema_update_as_printed_in_paper():
    codebook, _, ema_count = ema_step(laplace=False)
    # C = (2, 0) kept raw; E = W / (C + eps) = (5 / 2.1, 0.5 / 0.1)
    torch.testing.assert_close(ema_count, t([[2.0, 0.0]]))
    torch.testing.assert_close(codebook.flatten(), t([5 / 2.1, 5.0]))


# ---------------------------------------------------------------------------------- Eq. 6-7
@pytest.mark.parametrize(
    "start, order, expected",
    [
        # v=27: t1 = 9, a1 = (0+27+9)/3 = 12, v1 = (27+12+9)/3 = 16   (16/27 v, 4/9 v, 1/3 v)
        ((27.0, 0.0, 0.0), (2, 1, 0), (16.0, 12.0, 9.0)),
        # a=9: t1 = 3, a1 = (9+0+3)/3 = 4, v1 = (0+4+3)/3 = 7/3        (7/27 a, 4/9 a, 1/3 a)
        ((0.0, 9.0, 0.0), (2, 1, 0), (7 / 3, 4.0, 3.0)),
        # t=27: t1 = 9, a1 = (0+0+9)/3 = 3, v1 = (0+3+9)/3 = 4          (4/27 t, 1/9 t, 1/3 t)
        ((0.0, 0.0, 27.0), (2, 1, 0), (4.0, 3.0, 9.0)),
        # order V->A->T on v=27: v1 = 9, a1 = (9+0+0)/3 = 3, t1 = (9+3+0)/3 = 4
        ((27.0, 0.0, 0.0), (0, 1, 2), (9.0, 3.0, 4.0)),
        # AV, A->V on v=4: a1 = 2, v1 = (4+2)/2 = 3;  V->A: v1 = 2, a1 = (2+0)/2 = 1
        ((4.0, 0.0), (1, 0), (3.0, 2.0)),
        ((4.0, 0.0), (0, 1), (2.0, 1.0)),
    ],
)
def test_csa_cascade(start, order, expected):
    codebook = t(start).view(-1, 1, 1).clone()
    ops.csa_cascade_(codebook, order)
    torch.testing.assert_close(codebook.flatten(), t(expected))


def test_default_cascade_is_text_audio_video():
    quantizer = CrossModalQuantizer(num_codes=1, dim=1).double()
    assert quantizer.config.cascade == ("text", "audio", "video")
    assert CrossModalQuantizer(modalities=("video", "audio"), num_codes=1, dim=1).config.cascade == ("audio", "video")


# --------------------------------------------------------------------- dead-code counters
def test_dead_code_counters_thresholds():
    unused = torch.tensor([300, 300, 99, 98, -1, 150])
    counts = t([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    codebook, ema_sum = torch.zeros(1, 6, 1, dtype=F64), torch.zeros(1, 6, 1, dtype=F64)
    ema_count = torch.ones(1, 6, dtype=F64)
    dead, active = ops.ema_csa_update_reference(
        codebook, ema_sum, ema_count, unused, torch.zeros(1, 6, 1, dtype=F64), counts, ops.EmaCsaConfig(
            decay=0.99, eps=1e-5, laplace_smoothing=True, csa_order=None, csa_persistent=False, dead_after=300,
            active_window=100),
    )
    # +1 -> (301, 301, 100, 99, 0, 151); code 1 chosen -> 0; dead: > 300; active: 0 <= U < 100
    assert dead.tolist() == [True, False, False, False, False, False]
    assert active.tolist() == [False, True, False, True, True, False]
    assert unused.tolist() == [0, 0, 100, 99, 0, 151]  # dead codes restart at 0


def test_reset_copies_an_active_row_into_each_dead_row():
    codebook = torch.arange(6, dtype=F64).view(1, 6, 1).repeat(2, 1, 2)  # row k = k everywhere
    dead = torch.tensor([True, False, False, False, True, False])
    active = torch.tensor([False, True, False, True, False, False])
    generator = torch.Generator().manual_seed(0)
    reset = ops.reset_dead_codes_reference(codebook, dead, active, generator, noise_std=0.0)
    assert reset.tolist() == dead.tolist()
    for k in (0, 4):  # the whole row (both modalities) is one copied active row
        assert codebook[:, k].unique().item() in (1.0, 3.0)
    assert codebook[:, [1, 2, 3, 5]].flatten().tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0] * 2


def test_no_reset_without_active_codes():
    codebook = torch.arange(3, dtype=F64).view(1, 3, 1)
    reset = ops.reset_dead_codes_reference(
        codebook, torch.tensor([True, False, False]), torch.zeros(3, dtype=torch.bool),
        torch.Generator().manual_seed(0), noise_std=0.001,
    )
    assert not reset.any() and codebook.flatten().tolist() == [0.0, 1.0, 2.0]


# ------------------------------------------------------------------------------------ Eq. 8
def commitment_case(preset: str):
    quantizer = CrossModalQuantizer(modalities=("video", "audio"), num_codes=2, dim=1, preset=preset).double()
    quantizer.set_codebooks(t([[[0.0], [10.0]], [[1.0], [5.0]]]))
    z_v = t([[[1.0], [9.0]]]).requires_grad_()  # B=1, T=2 -> codes (0, 1), q_v = (0, 10)
    z_a = t([[[2.0], [4.0]]]).requires_grad_()  # -> codes (0, 1), q_a = (1, 5)
    return quantizer({"video": z_v, "audio": z_a}, update=False), z_v


def test_commitment_as_in_authors_code():
    out, z_v = commitment_case("official")
    # L_v = 0.5*mean(1^2, 1^2) + 0.125*mean((1-1)^2, (9-5)^2) = 0.5 + 1 = 1.5      (partner's own code)
    # L_a = 0.5*mean(1^2, 1^2) + 0.125*mean((2-0)^2, (4-10)^2) = 0.5 + 2.5 = 3.0
    assert out.losses["commit/video"].item() == pytest.approx(1.5, rel=1e-12)
    assert out.losses["commit/audio"].item() == pytest.approx(3.0, rel=1e-12)
    # dL_v/dz_v = 0.5 * 2(z - q_v)/2 + 0.125 * 2(z - q_a)/2 = (0.5*1 + 0, -0.5*1 + 0.125*4) = (0.5, 0)
    (grad,) = torch.autograd.grad(out.losses["commit/video"], z_v)
    torch.testing.assert_close(grad.flatten(), t([0.5, 0.0]))


def test_commitment_as_printed_in_paper():
    out, _ = commitment_case("paper")
    # self: 0.25 * sum_t (1^2 + 1^2) = 0.5; cross target E_a[k_v] = (1, 5): 0.125 * (0 + 16) = 2 -> 2.5
    # audio: 0.25 * 2 = 0.5; cross target E_v[k_a] = (0, 10): 0.125 * (4 + 36) = 5 -> 5.5
    assert out.losses["commit/video"].item() == pytest.approx(2.5, rel=1e-12)
    assert out.losses["commit/audio"].item() == pytest.approx(5.5, rel=1e-12)


# ------------------------------------------------------------------------------- DQA / CMCM
def test_cmcm_pair_on_uniform_usage():
    usage = torch.full((2, 2), 0.5, dtype=F64)
    # every score equal -> G = 1 everywhere -> L = -log(1 / (2 + 1e-5))
    assert ops.cmcm_pair_reference(usage, usage).item() == pytest.approx(math.log(2 + 1e-5), rel=1e-12)


def test_cmcm_pair_on_peaked_usage():
    usage_x = t([[1.0, 0.0], [0.0, 1.0]])
    usage_y = t([[0.75, 0.25], [0.25, 0.75]])
    # With l(p) = log(p + 1e-10) and l(1) ~ 0: S = [[a, b], [b, a]],
    #   a = l(.75) + .25 l(0),  b = l(.25) + .75 l(0),  a - b = log 3 + 0.5 * 23.0259 = log 3 - log 1e-5
    # L = log(1 + (1 + 1e-5) * exp(-(a - b))) = log(1 + (1 + 1e-5) * 1e-5 / 3)
    expected = math.log1p((1 + 1e-5) * 1e-5 / 3)
    assert ops.cmcm_pair_reference(usage_x, usage_y).item() == pytest.approx(expected, rel=1e-6)
    assert ops.cmcm_pair_reference(usage_y, usage_x).item() == pytest.approx(expected, rel=1e-6)  # symmetric


def test_cmcm_stays_finite_where_the_authors_exp_would_overflow_in_half_range():
    usage = torch.eye(64, dtype=torch.float32)  # scores span 46: exp(46) overflows float16, fine here
    assert torch.isfinite(ops.cmcm_pair_reference(usage, usage))


# --------------------------------------------------------------------------------- metrics
def test_perplexity_agreement_and_equal_num():
    assert ops.perplexity(t([[2.0, 2.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]])).tolist() == pytest.approx([2.0, 1.0])
    idx = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0]])
    assert ops.index_agreement(idx)[0, 1].item() == 0.5
    clips = torch.tensor([[[1, 1, 2, 2], [3, 3, 3, 0]], [[2, 1, 1, 2], [0, 0, 3, 0]]])  # [M=2, B=2, T=4]
    # modes: video (1 [tie 1/2 -> smaller], 3), audio (1 [tie], 0) -> one clip agrees
    assert ops.temporal_modes(clips).tolist() == [[1, 3], [1, 0]]
    assert ops.mode_agreement_count(clips).item() == 1


# ------------------------------------------------------------------------ Eq. 9 and STE
def test_straight_through_outputs_and_decoder_codes():
    quantizer = CrossModalQuantizer(modalities=("video", "audio"), num_codes=2, dim=1).double()
    quantizer.set_codebooks(t([[[0.0], [10.0]], [[1.0], [5.0]]]))
    z_v = t([[[1.0], [9.0]]]).requires_grad_()
    z_a = t([[[4.0], [2.0]]]).requires_grad_()  # codes (1, 0)
    out = quantizer({"video": z_v, "audio": z_a}, update=False)
    assert out.quantized["video"].flatten().tolist() == [0.0, 10.0]
    # authors: decoder m gets the full row [E_v; E_a] at m's own index
    assert out.tri_code["video"].view(2, 2).tolist() == [[0.0, 1.0], [10.0, 5.0]]  # rows 0, 1
    assert out.tri_code["audio"].view(2, 2).tolist() == [[10.0, 5.0], [0.0, 1.0]]  # rows 1, 0
    (grad,) = torch.autograd.grad(out.tri_code["audio"].sum(), z_v)  # gradient reaches every encoder
    assert grad.flatten().tolist() == [1.0, 1.0]

    paper = CrossModalQuantizer(modalities=("video", "audio"), num_codes=2, dim=1, preset="paper").double()
    paper.set_codebooks(quantizer.codebooks)
    out = paper({"video": z_v, "audio": z_a}, update=False)
    # Eq. 9: one code [q_v; q_a] for both decoders
    assert out.tri_code["video"].view(2, 2).tolist() == [[0.0, 5.0], [10.0, 1.0]]
    assert torch.equal(out.tri_code["video"], out.tri_code["audio"])
