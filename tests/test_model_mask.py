"""Padded per-clip text: the text BiLSTM, the text encoder's transformer, CPC and the text
reconstruction loss never read padding, and an all-True mask (class prompts) changes no bit of any
output or gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from codaar.model import CoDAARModel, CrossModalCPC, TemporalModule, TextTokenLSTM
from codaar.model.cpc import cpc_loss, cpc_pairs, pair_term
from codaar.model.decoders import reconstruction_loss
from codaar.model.encoders import reverse_real
from tests.test_model_codaar import AVT, B, T, make_batch, small_config

LENGTHS = [T, 2, 1, 4]  # one full caption, three padded ones (B = 4, T = 5)


def mask_of(lengths, steps=T) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ga, gb = grads(a), grads(b)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


def test_reverse_real_reverses_each_caption_in_place_and_is_its_own_inverse():
    x = torch.arange(B * T, dtype=torch.float32).view(B, T, 1)
    y = reverse_real(x, torch.tensor(LENGTHS))
    assert y[1, :, 0].tolist() == [6.0, 5.0, 7.0, 8.0, 9.0]  # tokens 5, 6 reversed; padding 7..9 kept
    assert y[0, :, 0].tolist() == x[0, :, 0].flip(0).tolist()
    assert torch.equal(reverse_real(y, torch.tensor(LENGTHS)), x)


# ------------------------------------------------------------------------------------- BiLSTM
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_text_lstm_with_an_all_true_mask_is_the_unmasked_lstm_bit_for_bit(dtype):
    torch.manual_seed(0)
    plain = TextTokenLSTM(12, 6).to(dtype)
    masked = copy.deepcopy(plain)
    x = torch.randn(8, T, 12, dtype=dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = plain(x1), masked(x2, torch.ones(8, T, dtype=torch.bool))
    assert torch.equal(out1, out2)
    g = torch.randn_like(out1)
    out1.backward(g)
    out2.backward(g)
    assert torch.equal(x1.grad, x2.grad)
    assert_same_grads(plain, masked)


def test_text_lstm_reads_each_caption_as_if_unpadded():
    torch.manual_seed(1)
    lstm = TextTokenLSTM(12, 6).double()
    x = torch.randn(B, T, 12, dtype=torch.float64)
    out = lstm(x, mask_of(LENGTHS))
    for b, n in enumerate(LENGTHS):
        alone = lstm(x[b : b + 1, :n])[0]  # the caption without padding, in a batch of its own
        torch.testing.assert_close(out[b, :n], alone, rtol=0, atol=1e-12)
        assert not out[b, n:].any()  # padded steps are zero
    # the backward direction starts at the last real token: it differs from reading the padding too
    assert not torch.allclose(out[1, :2], lstm(x[1:2])[0, :2])


# ------------------------------------------------------------------------------------- transformer
@pytest.mark.parametrize("training", [True, False])
def test_temporal_module_does_not_attend_to_padding(training):
    torch.manual_seed(2)
    temporal = TemporalModule(6, dim=8, heads=2, ffn_dim=16, dropout=0.0).double().train(training)
    h = torch.randn(B, T, 6, dtype=torch.float64)
    padding = ~mask_of(LENGTHS)
    with torch.set_grad_enabled(training):
        out = temporal(h, padding)
        for b, n in enumerate(LENGTHS):
            torch.testing.assert_close(out[b, :n], temporal(h[b : b + 1, :n])[0], rtol=0, atol=1e-12)
        # without padding, an all-False padding mask is no mask at all, in both modes
        assert torch.equal(temporal(h, torch.zeros(B, T, dtype=torch.bool)), temporal(h))


# ------------------------------------------------------------------------------------- CPC
def test_masked_pair_term_is_the_infonce_of_the_scored_clips_only():
    torch.manual_seed(3)
    targets, predictions = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    target_valid = torch.tensor([True, False, True, True, True, False])
    prediction_valid = torch.tensor([True, True, False, True, True, True])
    scored = target_valid & prediction_valid  # clips 0, 3, 4
    for variant, axis in (("official", 1), ("paper", 0)):
        term = pair_term(targets, predictions, variant, target_valid, prediction_valid)
        # by hand: the log-probability of each scored clip's own entry among the valid candidates
        candidates = prediction_valid if variant == "official" else target_valid
        scores = targets @ predictions.T
        expected = []
        for i in scored.nonzero().flatten().tolist():
            line = scores[i] if axis == 1 else scores[:, i]
            expected.append(line[i] - torch.logsumexp(line[candidates], dim=0))
        mean = torch.stack(expected).mean()
        torch.testing.assert_close(term, mean * 6, rtol=1e-12, atol=1e-12)  # a mean over the scored, times B


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_cpc_with_all_true_masks_is_unmasked_cpc_bit_for_bit(variant):
    torch.manual_seed(4)
    modalities = ("video", "audio", "text")
    cpc = CrossModalCPC(modalities, dim=8, context_dim=6, num_layers=2, prediction_steps=2, variant=variant)
    twin = copy.deepcopy(cpc)
    latents = {m: torch.randn(B, T, 8, requires_grad=True) for m in modalities}
    ones = {"text": torch.ones(B, T, dtype=torch.bool)}
    for t_star in (1, torch.tensor(2)):
        cpc.zero_grad()
        twin.zero_grad()
        a = cpc(latents, t_star=t_star)
        b = twin(latents, t_star=t_star, masks=ones)
        assert torch.equal(a.loss, b.loss)
        assert a.accuracies.keys() == b.accuracies.keys()
        assert all(torch.equal(a.accuracies[k], b.accuracies[k]) for k in a.accuracies)
        a.loss.backward()
        b.loss.backward()
        assert_same_grads(cpc, twin)


def test_cpc_scores_no_padded_context_or_target():
    torch.manual_seed(5)
    pairs = cpc_pairs(("audio", "text"), "official", 0.1)
    targets = {m: torch.randn(1, 6, 4, dtype=torch.float64) for m in ("audio", "text")}
    predictions = {m: torch.randn(1, 6, 4, dtype=torch.float64) for m in ("audio", "text")}
    target_valid = {"text": torch.tensor([[True, True, False, True, False, True]])}
    context_valid = {"text": torch.tensor([True, False, False, True, True, True])}
    loss, _ = cpc_loss(targets, predictions, pairs, "official", target_valid, context_valid)
    # moving what a padded text step holds changes nothing
    moved_t = {**targets, "text": torch.where(target_valid["text"][..., None], targets["text"], 1e3)}
    moved_p = {**predictions, "text": torch.where(context_valid["text"][None, :, None], predictions["text"], -7.0)}
    moved, _ = cpc_loss(moved_t, moved_p, pairs, "official", target_valid, context_valid)
    torch.testing.assert_close(loss, moved, rtol=1e-12, atol=1e-12)
    # a modality without padding is scored as before
    audio_only = cpc_pairs(("audio",), "official", 0.1)
    plain, _ = cpc_loss(targets, predictions, audio_only, "official")
    with_text_masks, _ = cpc_loss(targets, predictions, audio_only, "official", target_valid, context_valid)
    assert torch.equal(plain, with_text_masks)


# ------------------------------------------------------------------------------------- the model
def test_reconstruction_loss_with_an_all_true_mask_is_unmasked_and_counts_only_real_steps():
    torch.manual_seed(6)
    prediction, target = torch.randn(B, T, 3, requires_grad=True), torch.randn(B, T, 3)
    for reduction in ("mean", "sum"):
        p1, p2 = prediction.detach().clone().requires_grad_(), prediction.detach().clone().requires_grad_()
        plain = reconstruction_loss(p1, target, reduction)
        masked = reconstruction_loss(p2, target, reduction, torch.ones(B, T, dtype=torch.bool))
        assert torch.equal(plain, masked)
        plain.backward()
        masked.backward()
        assert torch.equal(p1.grad, p2.grad)
    mask = mask_of(LENGTHS)
    errors = (prediction - target).pow(2)[mask]  # [real steps, 3]
    torch.testing.assert_close(reconstruction_loss(prediction, target, "mean", mask), errors.mean())
    torch.testing.assert_close(reconstruction_loss(prediction, target, "sum", mask), errors.sum() / B)


def step(model: CoDAARModel, batch: dict, t_star=None):
    torch.manual_seed(7)  # dropout draws
    model.zero_grad()
    out = model(batch, cpc_generator=torch.Generator().manual_seed(8), cpc_t_star=t_star)
    out.loss.backward()
    return out


@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("fixed_t_star", [False, True])
def test_model_with_an_all_true_text_mask_changes_no_bit(preset, fixed_t_star):
    config = small_config(modalities=AVT, preset=preset)
    torch.manual_seed(0)
    plain = CoDAARModel(config)
    masked = copy.deepcopy(plain)
    batch = make_batch(config)
    t_star = torch.tensor(2) if fixed_t_star else None
    a = step(plain, batch, t_star)
    b = step(masked, {**batch, "text_mask": torch.ones(B, T, dtype=torch.bool)}, t_star)
    assert torch.equal(a.loss, b.loss)
    for name in ("losses", "metrics", "indices"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (name, key)
    assert_same_grads(plain, masked)
    state_a, state_b = plain.state_dict(), masked.state_dict()  # the codebook update too
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_what_padded_text_tokens_hold_changes_nothing():
    config = small_config(modalities=AVT)
    torch.manual_seed(0)
    model = CoDAARModel(config)
    twin = copy.deepcopy(model)
    batch = {**make_batch(config), "text_mask": mask_of(LENGTHS)}
    noisy = dict(batch, text=torch.where(batch["text_mask"][..., None], batch["text"], 50.0))
    a, b = step(model, batch), step(twin, noisy)
    for key in a.losses:
        assert torch.equal(a.losses[key], b.losses[key]), key
    for key in a.indices:
        assert torch.equal(a.indices[key], b.indices[key]), key
    assert_same_grads(model, twin)
    # and the padding is really masked: without the mask the padded tokens matter
    unmasked = {key: value for key, value in noisy.items() if key != "text_mask"}
    torch.manual_seed(0)
    c = step(CoDAARModel(config), unmasked)
    assert not torch.equal(a.losses["rec/text"], c.losses["rec/text"])


def test_a_text_mask_of_the_wrong_shape_is_refused():
    config = small_config(modalities=AVT)
    model = CoDAARModel(config)
    with pytest.raises(ValueError, match="text_mask must be a bool tensor"):
        model({**make_batch(config), "text_mask": torch.ones(B, T + 1, dtype=torch.bool)})


def test_inference_with_an_all_true_text_mask_changes_no_bit():
    config = small_config(modalities=AVT)
    torch.manual_seed(0)
    model = CoDAARModel(config).eval()
    text = make_batch(config)["text"]
    with torch.no_grad():  # torch's fused inference path of the transformer
        plain = model.latents("text", text)
        assert torch.equal(model.latents("text", text, torch.ones(B, T, dtype=torch.bool)), plain)
        assert torch.equal(model.encode({"text": text}, torch.ones(B, T, dtype=torch.bool))["text"].indices,
                           model.codes("text", text).indices)
        # with padding, each caption's real steps are what the caption alone gives
        padded = model.latents("text", text, mask_of(LENGTHS))
        for b, n in enumerate(LENGTHS):
            torch.testing.assert_close(padded[b, :n], model.latents("text", text[b : b + 1, :n])[0], rtol=0,
                                       atol=1e-5)
