"""Properties of the quantizer step that hold for any input (random inputs, fresh each run)."""

from __future__ import annotations

import itertools

import pytest
import torch

import codaar_kernels as ops
from codaar.quantizer import CrossModalQuantizer

F64 = torch.float64


def update_config(**overrides):
    kwargs = dict(decay=0.99, eps=1e-5, laplace_smoothing=True, csa_order=None, csa_persistent=False,
                  dead_after=300, active_window=100)
    kwargs.update(overrides)
    return ops.EmaCsaConfig(**kwargs)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))) + [(0, 1), (1, 0)])
def test_csa_keeps_each_codeword_in_the_convex_hull_of_its_contributors(order):
    num_mod = len(order)
    # The cascade is linear across modalities: applying it to the basis gives its mixing matrix.
    basis = torch.eye(num_mod, dtype=F64).view(num_mod, 1, num_mod).clone()
    ops.csa_cascade_(basis, order)
    mixing = basis.view(num_mod, num_mod)
    assert (mixing >= 0).all() and torch.allclose(mixing.sum(dim=1), torch.ones(num_mod, dtype=F64))

    codebook = torch.randn(num_mod, 50, 7, dtype=F64) * torch.rand(num_mod, 50, 1, dtype=F64) * 10
    before = codebook.clone()
    ops.csa_cascade_(codebook, order)
    torch.testing.assert_close(codebook, torch.einsum("mp,pkd->mkd", mixing, before))
    low, high = before.min(dim=0).values, before.max(dim=0).values
    assert (codebook >= low - 1e-12).all() and (codebook <= high + 1e-12).all()


@pytest.mark.parametrize("laplace", [True, False])
def test_ema_of_a_constant_stream_converges_to_it(laplace):
    num_mod, num_codes, dim = 2, 5, 3
    target = torch.randn(num_mod, num_codes, dim, dtype=F64)
    counts = torch.randint(1, 6, (num_mod, num_codes)).to(F64)
    sums = target * counts.unsqueeze(-1)  # every step, each code sees `counts` frames averaging `target`
    codebook = torch.zeros(num_mod, num_codes, dim, dtype=F64)
    ema_sum, ema_count = torch.randn_like(codebook), torch.zeros(num_mod, num_codes, dtype=F64)
    unused = torch.full((num_codes,), -1)
    for _ in range(3000):
        ops.ema_csa_update_reference(codebook, ema_sum, ema_count, unused, sums, counts,
                                     update_config(laplace_smoothing=laplace))
    # The stored counts are re-smoothed every step, so their bias compounds to about
    # eps * decay / (1 - decay) / count (1e-3 at count 1); the paper's +eps biases E by eps / count.
    tolerance = 2e-3 if laplace else 1e-4
    torch.testing.assert_close(codebook, target, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(ema_count.sum(dim=1), counts.sum(dim=1), rtol=1e-9, atol=0)


def test_counts_add_up():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=37, dim=8).double()
    batch, steps, decay = 6, 10, quantizer.config.decay
    for step in range(1, 6):
        latents = {m: torch.randn(batch, steps, 8, dtype=F64) for m in quantizer.modalities}
        z = torch.stack([latents[m] for m in quantizer.modalities]).view(3, -1, 8)
        idx, _ = ops.assign_reference(z, quantizer.codebook)
        sums, counts = ops.dta_accumulate_reference(z, idx, 37, 0.6, 0.2)
        assert counts.sum(dim=1).tolist() == [batch * steps] * 3
        # the weights sum to 1, so the sums over codes of H are the sums of the mixed latents
        torch.testing.assert_close(sums.sum(dim=1), (0.2 * z.sum(0, keepdim=True) + 0.4 * z).sum(1))
        quantizer(latents)
        # Laplace smoothing preserves the total, so sum_k C is (1 - decay^t) * frames
        expected_total = (1 - decay**step) * batch * steps
        torch.testing.assert_close(quantizer.ema_count.sum(dim=1), torch.full((3,), expected_total, dtype=F64))


def test_reset_touches_only_dead_codes():
    torch.manual_seed(1)
    quantizer = CrossModalQuantizer(num_codes=40, dim=4).double()
    quantizer.set_codebooks(torch.randn(3, 40, 4, dtype=F64), torch.rand(3, 40, dtype=F64) + 0.5)
    unused = torch.randint(0, 400, (40,))
    quantizer.unused_steps.copy_(unused)
    latents = {m: torch.randn(3, 2, 4, dtype=F64) for m in quantizer.modalities}

    twin = CrossModalQuantizer(num_codes=40, dim=4).double()
    twin.load_state_dict(quantizer.state_dict())
    twin.unused_steps.fill_(0)  # nothing dead: the same step without any reset
    out = quantizer(latents)
    twin(latents)

    chosen = torch.zeros(40, dtype=torch.bool)
    for idx in out.indices.values():
        chosen[idx.flatten()] = True
    dead = (unused + 1 > 300) & ~chosen
    assert dead.any()
    changed = (quantizer.codebook != twin.codebook).any(dim=(0, 2))
    assert torch.equal(changed, dead)
    assert torch.equal(quantizer.ema_sum, twin.ema_sum) and torch.equal(quantizer.ema_count, twin.ema_count)


def plain_ema_vq_step(codebook, ema_sum, ema_count, z, decay=0.99, eps=1e-5):
    """Textbook EMA k-means VQ for one modality (van den Oord et al.), with Laplace-smoothed counts."""
    dist = torch.cdist(z, codebook) ** 2
    idx = dist.argmin(dim=1)
    counts = torch.bincount(idx, minlength=codebook.shape[0]).to(z.dtype)
    sums = torch.zeros_like(codebook).index_add_(0, idx, z)
    ema_count.mul_(decay).add_((1 - decay) * counts)
    total = ema_count.sum()
    ema_count.copy_((ema_count + eps) / (total + codebook.shape[0] * eps) * total)
    ema_sum.mul_(decay).add_((1 - decay) * sums)
    codebook.copy_(ema_sum / ema_count.unsqueeze(1))
    return idx


def test_without_dta_and_csa_each_modality_is_a_plain_ema_vq():
    torch.manual_seed(2)
    quantizer = CrossModalQuantizer(num_codes=16, dim=5, dta=False, csa=False, dqa=False).double()
    quantizer.set_codebooks(torch.randn(3, 16, 5, dtype=F64), torch.rand(3, 16, dtype=F64) + 1)
    plain = [(quantizer.codebook[m].clone(), quantizer.ema_sum[m].clone(), quantizer.ema_count[m].clone())
             for m in range(3)]
    for _ in range(5):
        latents = {m: torch.randn(4, 6, 5, dtype=F64) for m in quantizer.modalities}
        out = quantizer(latents)
        for m, name in enumerate(quantizer.modalities):
            idx = plain_ema_vq_step(*plain[m], latents[name].view(-1, 5))
            assert torch.equal(out.indices[name].flatten(), idx)
            torch.testing.assert_close(quantizer.codebook[m], plain[m][0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(quantizer.ema_count[m], plain[m][2], rtol=1e-12, atol=1e-12)


def test_with_dta_and_csa_modalities_influence_each_other():
    torch.manual_seed(3)
    base = CrossModalQuantizer(num_codes=8, dim=3).double()
    base.set_codebooks(torch.randn(3, 8, 3, dtype=F64))
    latents = {m: torch.randn(2, 5, 3, dtype=F64) for m in base.modalities}
    moved = {**latents, "audio": latents["audio"] + 1.0}
    a, b = CrossModalQuantizer(num_codes=8, dim=3).double(), CrossModalQuantizer(num_codes=8, dim=3).double()
    a.load_state_dict(base.state_dict())
    b.load_state_dict(base.state_dict())
    a(latents)
    b(moved)
    assert not torch.allclose(a.codebook[0], b.codebook[0])  # video's codebook sees audio
