"""`CrossModalQuantizer` refuses what cannot work: latents of no clip or no frame, a state dict of
another modality order; completes a state dict without its EMA statistics consistently; and says
how much memory a huge state or call needs before allocating it."""

import warnings

import pytest
import torch

import codaar.quantizer as quantizer_module
from codaar.quantizer import CrossModalQuantizer

MODS = ("video", "audio", "text")


def latents(batch, steps, dim=6, modalities=MODS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, dim, generator=gen) * 3
    cls = torch.randint(0, 5, (batch, steps), generator=gen)
    return {m: centres[cls] + 0.3 * i + 0.1 * torch.randn(batch, steps, dim, generator=gen)
            for i, m in enumerate(modalities)}


def trained(modalities=MODS, **settings):
    torch.manual_seed(0)
    q = CrossModalQuantizer(num_codes=12, dim=6, modalities=modalities, **settings)
    for seed in range(4):
        q(latents(4, 5, modalities=modalities, seed=seed))
    return q


# ------------------------------------------------------------------------------- empty batches
@pytest.mark.parametrize("shape", [(0, 5, 6), (3, 0, 6), (0, 0, 6)])
@pytest.mark.parametrize("mode", ["train", "eval", "no-update", "frozen"])
@pytest.mark.parametrize("init", ["official", "kmeans", "aligned-kmeans"])
def test_no_clip_or_no_frame_is_a_clear_value_error(shape, mode, init):
    q = CrossModalQuantizer(num_codes=8, dim=6, codebook_init=init).train(mode != "eval")
    q.freeze(mode == "frozen")
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(ValueError, match=rf"at least one clip and one frame \(B >= 1, T >= 1\), got \[B, T, D\] = "
                                         rf"\[{shape[0]}, {shape[1]}, 6\]"):
        q({m: torch.zeros(shape) for m in MODS}, update=False if mode == "no-update" else None)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())  # nothing changed


@pytest.mark.parametrize("init", ["kmeans", "aligned-kmeans"])
def test_initialize_on_no_frames_is_a_clear_value_error(init):
    with pytest.raises(ValueError, match="at least one clip and one frame"):
        CrossModalQuantizer(num_codes=8, dim=6, codebook_init=init).initialize({m: torch.zeros(2, 0, 6) for m in MODS})


@pytest.mark.parametrize("shape", [(0, 6), (3, 0, 6), (0, 0, 6)])
def test_lookup_of_no_latents_is_an_empty_result(shape):
    q = trained()
    out = q.lookup("audio", torch.zeros(shape))
    assert out.indices.shape == shape[:-1] and out.indices.dtype == torch.int64
    assert out.codes.shape == (*shape[:-1], 6) and out.rows.shape == (*shape[:-1], 18)


# --------------------------------------------------------------------------------- modality order
@pytest.mark.parametrize("other", [("audio", "video", "text"), ("text", "audio", "video"), ("v", "a", "t")])
def test_a_state_dict_of_another_modality_order_is_refused_naming_both(other):
    saved = trained().state_dict()
    q = CrossModalQuantizer(num_codes=12, dim=6, modalities=other)
    untouched = q.codebook.clone()
    for strict in (True, False):
        expected = rf"modality order video,audio,text, this quantizer's is {','.join(other)}"
        with pytest.raises(ValueError, match=expected):
            q.load_state_dict(saved, strict=strict)
    assert torch.equal(q.codebook, untouched)


def test_the_same_order_loads_and_a_state_dict_without_the_order_is_taken_as_ours():
    first = trained()
    saved = first.state_dict()
    second = CrossModalQuantizer(num_codes=12, dim=6)
    second.load_state_dict(saved)
    assert torch.equal(second.codebook, first.codebook)
    legacy = {k: v for k, v in saved.items() if k != "modality_order"}  # checkpoints from before the buffer
    third = CrossModalQuantizer(num_codes=12, dim=6)
    third.load_state_dict(legacy)
    assert torch.equal(third.codebook, first.codebook) and third.state_dict()["modality_order"].numel() > 0


def test_two_modalities_swapped_are_refused():
    saved = trained(modalities=("audio", "video")).state_dict()
    with pytest.raises(ValueError, match="modality order audio,video, this quantizer's is video,audio"):
        CrossModalQuantizer(num_codes=12, dim=6, modalities=("video", "audio")).load_state_dict(saved)


# ------------------------------------------------------------------------------ EMA statistics
@pytest.mark.parametrize("dropped", [("ema_sum", "ema_count"), ("ema_sum",), ("ema_count",)])
def test_missing_ema_statistics_are_recomputed_consistently(dropped):
    first = trained()
    saved = {k: v.clone() for k, v in first.state_dict().items() if k not in dropped}
    loaded = CrossModalQuantizer(num_codes=12, dim=6)
    result = loaded.load_state_dict(saved, strict=False)
    assert sorted(result.missing_keys) == sorted(dropped)
    # exactly what set_codebooks makes of the loaded codebook (and the saved counts, if any)
    reference = CrossModalQuantizer(num_codes=12, dim=6)
    reference.load_state_dict(first.state_dict())
    reference.set_codebooks(first.codebook.clone(), None if "ema_count" in dropped else first.ema_count.clone())
    for name in ("codebook", "ema_sum", "ema_count"):
        assert torch.equal(getattr(loaded, name), getattr(reference, name)), name
    # the next update moves the codewords as far as a consistent state does: no jump by thousands
    batch = latents(4, 5, seed=9)
    before = loaded.codebook.clone()
    loaded(batch)
    reference(batch)
    assert torch.equal(loaded.codebook, reference.codebook)
    assert (loaded.codebook - before).abs().max() < before.abs().max()


def test_missing_ema_statistics_under_strict_are_still_reported():
    saved = {k: v for k, v in trained().state_dict().items() if k != "ema_sum"}
    with pytest.raises(RuntimeError, match="ema_sum"):
        CrossModalQuantizer(num_codes=12, dim=6).load_state_dict(saved)


# ------------------------------------------------------------------------------ memory warnings
def test_a_call_above_the_threshold_warns_how_much_before_allocating(monkeypatch):
    q = trained()
    before = int(q.num_updates)
    monkeypatch.setattr(quantizer_module, "LARGE_ALLOCATION_BYTES", 10_000)
    # 3 modalities x 50 x 10 frames x 12 codes x 4 bytes, twice with DQA (the softmax kept for backward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(ResourceWarning, match=r"N=500 frames \(B x T\) against K=12 .* needs about 140.6 KiB"):
            q(latents(50, 10))
    assert int(q.num_updates) == before  # raised before the call allocated or updated anything
    with pytest.warns(ResourceWarning, match=r"N=200 frames .* needs about 56.2 KiB"):  # DQA runs in eval too
        q.eval()(latents(20, 10))
    with pytest.warns(ResourceWarning, match=r"N=2000 frames .*\[M=1, N, K\].* needs about 93.8 KiB"):
        q.lookup("audio", torch.randn(2000, 6))


def test_below_the_threshold_nothing_is_said(monkeypatch):
    q = trained()
    monkeypatch.setattr(quantizer_module, "LARGE_ALLOCATION_BYTES", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        q(latents(2, 5))  # 3 x 10 x 12 x 4 x 2 = 2880 bytes
        q.lookup("audio", torch.randn(100, 6))


def test_a_huge_state_warns_at_construction(monkeypatch):
    monkeypatch.setattr(quantizer_module, "LARGE_ALLOCATION_BYTES", 1 << 20)
    with pytest.warns(ResourceWarning, match=r"M=3 codebooks of K=4096 codes of D=32 needs about 4.7 MiB"):
        CrossModalQuantizer(num_codes=4096, dim=32)


def test_the_default_threshold_is_gigabytes():
    assert quantizer_module.LARGE_ALLOCATION_BYTES == 2 << 30
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        CrossModalQuantizer(num_codes=800, dim=256)  # the paper's size: silent
