"""The whole quantizer on the Triton kernels (compiled on a GPU, under the interpreter on the CPU)
tracks the eager reference over consecutive training steps, for two to four modalities and with the
count floor; and the dispatch switch picks the path it says."""

from __future__ import annotations

import pytest
import torch

import codaar_kernels as ops
from codaar.quantizer import CrossModalQuantizer
from codaar_kernels import dispatch
from codaar_kernels.utilities import triton_device

SETTINGS = dict(num_codes=40, dim=24, dead_after=3, active_window=2)
DEVICE = triton_device()


def clustered_batches(steps, modalities, seed=0, batch=4, frames=5, dim=24):
    """Frames near shared centres: nearest codes are separated far beyond fp32 rounding."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=gen) * 3
    for _ in range(steps):
        labels = torch.randint(0, 8, (batch, frames), generator=gen)
        yield {m: (centres[labels] + 0.05 * torch.randn(batch, frames, dim, generator=gen)).to(DEVICE).requires_grad_()
               for m in modalities}


def twin_quantizers(**settings):
    torch.manual_seed(0)
    eager = CrossModalQuantizer(**{**SETTINGS, **settings})
    triton = CrossModalQuantizer(**{**SETTINGS, **settings})
    triton.load_state_dict(eager.state_dict())
    eager, triton = eager.to(DEVICE), triton.to(DEVICE)
    start = torch.randn(eager.config.num_modalities, SETTINGS["num_codes"], SETTINGS["dim"], device=DEVICE) * 3
    eager.set_codebooks(start)
    triton.set_codebooks(start)
    return eager, triton


@pytest.mark.parametrize("settings", [dict(), dict(preset="paper"), dict(modalities=("video", "audio")),
                                      dict(deterministic=True), dict(modalities=("video", "audio", "text", "depth")),
                                      dict(count_floor=1.0)],
                         ids=["official", "paper", "AV", "deterministic", "four-modalities", "count-floor"])
def test_triton_quantizer_tracks_reference_over_steps(settings):
    eager, triton = twin_quantizers(**settings)
    resets = 0
    for batch in clustered_batches(5, eager.modalities):
        twin_batch = {m: z.detach().clone().requires_grad_() for m, z in batch.items()}
        with ops.use_backend("eager"):
            ref = eager(batch)
        with ops.use_backend("triton"):
            out = triton(twin_batch)
        for m in eager.modalities:
            assert torch.equal(out.indices[m], ref.indices[m]), m
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
        ref.loss.backward()
        out.loss.backward()
        for m in eager.modalities:
            torch.testing.assert_close(twin_batch[m].grad, batch[m].grad, rtol=1e-4, atol=1e-6)
        scale = eager.codebook.abs().amax(-1, keepdim=True)
        assert ((triton.codebook - eager.codebook).abs() / scale).max() < 1e-5  # stated tolerance: 1e-5 blockwise
        torch.testing.assert_close(triton.ema_count, eager.ema_count, rtol=1e-6, atol=1e-7)
        assert torch.equal(triton.unused_steps, eager.unused_steps)
        resets += int(ref.metrics["codes_reset"])
    assert resets > 0, "the trajectory was meant to include dead-code resets"


def test_dispatch_picks_the_path_it_says(monkeypatch):
    cpu32, cpu64 = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.float64)
    with ops.use_backend("eager"):
        assert not dispatch.use_triton(cpu32)
    with ops.use_backend("auto"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert dispatch.use_triton(cpu32)  # interpreter: Triton on the CPU
        assert not dispatch.use_triton(cpu64)  # no float64 kernel: the reference
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert not dispatch.use_triton(cpu32)  # plain CPU: the reference
    with ops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            dispatch.use_triton(cpu32)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        with pytest.raises(TypeError, match="no kernel"):
            dispatch.use_triton(cpu64)
    with pytest.raises(ValueError, match="expected one of"):
        ops.set_backend("cuda")
