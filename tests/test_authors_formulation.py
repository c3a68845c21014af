"""The vectorised reference equals the quantizer step written the way the authors wrote it
(tests/authors_formulation.py): both presets, several consecutive steps, dead-code resets included."""

from __future__ import annotations

import pytest
import torch

from codaar.quantizer import CrossModalQuantizer
from tests.authors_formulation import AuthorsState, authors_step

F64 = torch.float64


def random_start(quantizer: CrossModalQuantizer, seed: int) -> None:
    """A mid-training state: spread codewords, positive counts, counters about to cross both thresholds."""
    num_mod, num_codes, dim = quantizer.codebook.shape
    gen = torch.Generator().manual_seed(seed)
    counts = torch.rand(num_mod, num_codes, generator=gen, dtype=F64) * 3 + 0.1
    codes = torch.randn(num_mod, num_codes, dim, generator=gen, dtype=F64) * 1.5
    codes[:, -4:] *= 100  # far away: never chosen, so their counters keep growing
    quantizer.set_codebooks(codes, counts)
    unused = torch.randint(-1, 60, (num_codes,), generator=gen)
    unused[-4:] = torch.tensor([298, 299, 300, 301])  # dead after 3, 2, 1 and 0 more unused steps
    unused[:3] = torch.tensor([97, 98, 99])  # leave the active window on the way
    quantizer.unused_steps.copy_(unused)


CASES = [
    dict(preset="official"),
    dict(preset="paper"),
    dict(preset="official", modalities=("video", "audio")),
    dict(preset="paper", modalities=("video", "audio")),
    dict(preset="official", dta=False, csa=False),
    dict(preset="official", cascade=("video", "text", "audio")),
    dict(preset="paper", dqa=False, dta=False),
]


@pytest.mark.parametrize("settings", CASES, ids=[str(c) for c in CASES])
def test_reference_equals_authors_onehot_formulation(settings):
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=24, dim=6, reset_seed=11, **settings).double().train()
    random_start(quantizer, seed=3)
    state = AuthorsState(quantizer)
    cfg = quantizer.config
    gen = torch.Generator().manual_seed(5)
    total_resets = 0
    for step in range(6):
        z = [torch.randn(5, 4, 6, generator=gen, dtype=F64) * 1.5 for _ in cfg.modalities]
        z = [zm.requires_grad_() for zm in z]
        out = quantizer(dict(zip(cfg.modalities, z)))
        expected = authors_step(state, [zm.detach().requires_grad_() for zm in z], cfg, step)
        total_resets += len(expected["dead"])

        for m, name in enumerate(cfg.modalities):
            assert torch.equal(out.indices[name].flatten(), expected["indices"][m]), (step, name)
            torch.testing.assert_close(out.losses[f"commit/{name}"], expected["commit"][m], rtol=1e-12, atol=1e-12)
        if cfg.dqa:
            torch.testing.assert_close(out.losses["dqa"], expected["cmcm"], rtol=1e-12, atol=1e-12)
        state_E = quantizer.codebook.permute(1, 0, 2).reshape(cfg.num_codes, -1)
        state_W = quantizer.ema_sum.permute(1, 0, 2).reshape(cfg.num_codes, -1)
        torch.testing.assert_close(state_E, state.E, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(state_W, state.W, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(quantizer.ema_count, torch.stack(state.C), rtol=1e-12, atol=1e-12)
        assert torch.equal(quantizer.unused_steps.double(), state.U), step
    assert total_resets >= 4, "the trajectory was meant to include dead-code resets"


def test_cmcm_gradient_equals_authors_loop():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=16, dim=5).double()
    random_start(quantizer, seed=1)
    state = AuthorsState(quantizer)
    z = [torch.randn(4, 3, 5, dtype=F64, requires_grad=True) for _ in range(3)]
    out = quantizer(dict(zip(quantizer.modalities, z)), update=False)
    z_authors = [zm.detach().clone().requires_grad_() for zm in z]
    expected = authors_step(state, z_authors, quantizer.config, 0)
    ours = torch.autograd.grad(out.loss, z)
    theirs = torch.autograd.grad(expected["cmcm"] + sum(expected["commit"]), z_authors)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
