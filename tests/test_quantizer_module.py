"""The nn.Module around the reference: state, interface, precision, errors."""

from __future__ import annotations

import pytest
import torch

from codaar.quantizer import CrossModalQuantizer
from codaar.quantizer_config import PRESETS, QuantizerConfig

F64 = torch.float64


def clustered_latents(batch, steps, dim, modalities, generator, dtype=torch.float32, centres=None):
    """Frames near one of 6 shared centres (plus per-modality offsets): well-separated argmins."""
    if centres is None:
        centres = torch.randn(6, dim, generator=generator) * 3
    cls = torch.randint(0, 6, (batch, steps), generator=generator)
    return {
        m: (centres[cls] + 0.3 * i + 0.1 * torch.randn(batch, steps, dim, generator=generator)).to(dtype)
        for i, m in enumerate(modalities)
    }


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    first = CrossModalQuantizer(num_codes=20, dim=6, dead_after=3, active_window=2)
    gen = torch.Generator().manual_seed(1)
    batches = [clustered_latents(4, 5, 6, first.modalities, gen) for _ in range(10)]
    for batch in batches[:5]:
        first(batch)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    assert set(saved) == {"codebook", "ema_sum", "ema_count", "unused_steps", "num_updates", "last_used", "initialized",
                          "modality_order"}

    resumed = CrossModalQuantizer(num_codes=20, dim=6, dead_after=3, active_window=2)
    resumed.load_state_dict(saved)
    for batch in batches[5:]:
        a, b = first(batch), resumed(batch)
        for m in first.modalities:
            assert torch.equal(a.indices[m], b.indices[m])
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert int(first.num_updates) == 10


def test_resets_fire_and_are_reproducible():
    torch.manual_seed(0)
    runs, resets = [], []
    for _ in range(2):
        torch.manual_seed(0)
        quantizer = CrossModalQuantizer(num_codes=30, dim=4, dead_after=2, active_window=2, reset_seed=7)
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):
            out = quantizer(clustered_latents(3, 4, 4, quantizer.modalities, gen))
            resets.append(int(out.metrics["codes_reset"]))
        runs.append(quantizer.codebook.clone())
    assert sum(resets) > 0
    assert torch.equal(runs[0], runs[1])


def test_float32_tracks_float64():
    torch.manual_seed(0)
    q32 = CrossModalQuantizer(num_codes=64, dim=16)
    q64 = CrossModalQuantizer(num_codes=64, dim=16).double()
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=gen) * 3
    start = torch.randn(3, 64, 16, generator=gen, dtype=F64) * 3
    q32.set_codebooks(start.float())
    q64.set_codebooks(start)
    for _ in range(8):
        batch = clustered_latents(8, 10, 16, q32.modalities, gen, centres=centres)
        out32 = q32(batch)
        out64 = q64({m: v.double() for m, v in batch.items()})
        for m in q32.modalities:
            assert torch.equal(out32.indices[m], out64.indices[m])
        torch.testing.assert_close(out32.loss.double(), out64.loss, rtol=1e-5, atol=1e-6)
    scale = q64.codebook.abs().amax(-1, keepdim=True)
    assert ((q32.codebook.double() - q64.codebook).abs() / scale).max() < 1e-4
    torch.testing.assert_close(q32.ema_count.double(), q64.ema_count, rtol=1e-5, atol=1e-6)


def test_bfloat16_latents_are_quantized_in_float32():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=12, dim=8)
    gen = torch.Generator().manual_seed(0)
    batch = clustered_latents(2, 5, 8, quantizer.modalities, gen, dtype=torch.bfloat16)
    batch = {m: v.requires_grad_() for m, v in batch.items()}
    out = quantizer(batch, update=False)
    reference = quantizer({m: v.detach().float() for m, v in batch.items()}, update=False)
    for m in quantizer.modalities:
        assert out.quantized[m].dtype == torch.bfloat16 and out.tri_code[m].dtype == torch.bfloat16
        assert torch.equal(out.indices[m], reference.indices[m])
    out.loss.backward()
    assert all(v.grad is not None and v.grad.dtype == torch.bfloat16 for v in batch.values())


def test_eval_mode_and_freeze_leave_the_state_alone():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=10, dim=4)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    batch = {m: torch.randn(2, 3, 4) for m in quantizer.modalities}
    quantizer.eval()(batch)
    quantizer.train().freeze()(batch)
    quantizer.freeze(False)(batch, update=False)
    for name, tensor in quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    quantizer(batch)
    assert not torch.equal(quantizer.codebook, before["codebook"])


def test_lookup_matches_forward_and_never_touches_state():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=16, dim=4)
    quantizer.set_codebooks(torch.randn(3, 16, 4))
    batch = {m: torch.randn(3, 5, 4) for m in quantizer.modalities}
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    out = quantizer(batch, update=False)
    for m in quantizer.modalities:
        found = quantizer.lookup(m, batch[m])
        assert torch.equal(found.indices, out.indices[m])
        # the straight-through value z + (q - z) equals q up to one rounding
        torch.testing.assert_close(found.codes, out.quantized[m], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(found.rows, out.tri_code[m], rtol=1e-6, atol=1e-6)
        assert torch.equal(quantizer.codes_from_indices(found.indices, m), found.codes)
    for name, tensor in quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_set_codebooks_is_what_the_next_update_starts_from():
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=5, dim=3, dta=False, csa=False).double()
    codes = torch.randn(3, 5, 3, dtype=F64)
    quantizer.set_codebooks(codes)
    assert torch.equal(quantizer.codebooks, codes)
    # frames exactly on code 0: after an EMA step every code is still where it was set (up to the
    # ~1e-7 shift that Laplace smoothing of the counts adds), instead of being recomputed from zeros
    batch = {m: codes[i, 0].expand(1, 4, 3).clone() for i, m in enumerate(quantizer.modalities)}
    quantizer(batch)
    torch.testing.assert_close(quantizer.codebook, codes, rtol=1e-5, atol=1e-6)


def test_presets_are_named_sets_of_switches():
    official, paper = QuantizerConfig(), QuantizerConfig(preset="paper")
    for name, value in PRESETS["paper"].items():
        assert getattr(paper, name) == value
        assert getattr(official, name) == PRESETS["official"][name]
    mixed = QuantizerConfig(preset="paper", laplace_smoothing=True)
    assert mixed.laplace_smoothing and mixed.commit_self_weight == 0.25
    assert official.replace(preset="paper") == paper
    assert QuantizerConfig(modalities=("video", "audio")).dta_self_weight == 0.75
    assert QuantizerConfig(dta=False).effective_dta_weights() == (1.0, 0.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(preset="nope"), "setting 'preset': expected one of official, paper, recommended, found 'nope'"),
        (dict(cascade=("text", "audio")), "setting 'cascade': expected an order of video,audio,text"),
        (dict(modalities=("audio", "audio")), "setting 'modalities': expected distinct names"),
        (dict(loss_reduction="max"), "setting 'loss_reduction': expected one of mean, sum, found 'max'"),
        (dict(num_codes=0), "setting 'num_codes': expected an integer >= 1, found 0"),
        (dict(decay=1.0), "setting 'decay': expected a finite number >= 0 and < 1, found 1.0"),
    ],
)
def test_bad_configuration_is_named(settings, message):
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**settings)


def test_bad_latents_are_named():
    quantizer = CrossModalQuantizer(num_codes=4, dim=8)
    good = {m: torch.randn(2, 3, 8) for m in quantizer.modalities}
    with pytest.raises(KeyError, match=r"missing \['text'\]"):
        quantizer({"video": good["video"], "audio": good["audio"]})
    with pytest.raises(ValueError, match=r"latents\['audio'\] must be \[B, T, D\] = \[2, 3, 8\], got \[2, 3, 7\]"):
        quantizer({**good, "audio": torch.randn(2, 3, 7)})
    with pytest.raises(ValueError, match=r"latents\['video'\] must be \[B, T, D\]"):
        quantizer({**good, "video": torch.randn(6, 8)})
    with pytest.raises(ValueError, match=r"codebooks must be \[3, 4, 8\]"):
        quantizer.set_codebooks(torch.randn(4, 8))
    with pytest.raises(KeyError, match="unknown modality 'depth'"):
        quantizer.lookup("depth", torch.randn(2, 8))


@pytest.mark.parametrize("num_codes", [1, 3, 800])
def test_any_codebook_size_runs_a_full_training_step(num_codes):
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=num_codes, dim=16)
    batch = {m: torch.randn(3, 7, 16, requires_grad=True) for m in quantizer.modalities}
    out = quantizer(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(v.grad).all() for v in batch.values())
    assert all((idx < num_codes).all() for idx in out.indices.values())
