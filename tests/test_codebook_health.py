"""Codebook health (issue 7): usage metrics, the count-floor guard, the trainer flags end to end."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from codaar.quantizer import CrossModalQuantizer
from codaar.run_folder import checkpoint as ckpt
from codaar.train import main

MODS = ("video", "audio", "text")
TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--no-progress"]


def controlled_quantizer(**settings) -> CrossModalQuantizer:
    """K = 8 well-separated codes (10 x one-hot), identical in every modality; no DTA/CSA mixing."""
    q = CrossModalQuantizer(num_codes=8, dim=8, dta=False, csa=False, dqa=False, **settings).double().train()
    q.set_codebooks(10 * torch.eye(8, dtype=torch.float64).expand(3, 8, 8).clone())
    return q


def choosing(codes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Latents sitting exactly on the given codes (one sample, one frame per code)."""
    return {m: 10 * torch.eye(8, dtype=torch.float64)[codes[m]].unsqueeze(0) for m in MODS}


def test_usage_metrics_per_modality():
    q = controlled_quantizer(active_window=2, dead_after=3)
    schedule = [{"video": [0, 1], "audio": [0, 4], "text": [5, 5]},
                {"video": [2, 2], "audio": [4, 4], "text": [5, 5]},
                {"video": [2, 2], "audio": [4, 4], "text": [5, 5]}]
    for codes in schedule:
        out = q(choosing(codes))
    metrics = out.metrics
    assert all(isinstance(v, torch.Tensor) for v in metrics.values()), "tensors: no host sync in the step"
    assert int(metrics["codes_used/video"]) == 1  # this batch
    assert int(metrics["codes_recent/video"]) == 1  # code 2 (codes 0, 1: 2 updates ago, outside the window)
    assert int(metrics["codes_recent/audio"]) == 1 and int(metrics["codes_recent/text"]) == 1
    assert int(metrics["codes_dead/video"]) == 5  # never chosen by video: 3..7
    assert int(metrics["codes_dead/audio"]) == 6  # 0 chosen 2 updates ago is not dead yet
    for _ in range(2):
        out = q(choosing(schedule[-1]))
    assert int(out.metrics["codes_dead/video"]) == 7 and int(out.metrics["codes_dead/audio"]) == 7
    for i, m in enumerate(MODS):
        assert float(out.metrics[f"max_abs_codeword/{m}"]) == float(q.codebook[i].abs().max())
    # evaluation calls report the same health metrics without touching the state
    assert "codes_recent/video" in q.eval()(choosing(schedule[0])).metrics


def official_step(latents, **settings):
    torch.manual_seed(0)
    q = CrossModalQuantizer(num_codes=32, dim=8, **settings).double().train()
    before = q.codebook.clone()
    out = q(latents)
    return q, before, out


def test_guard_keeps_never_chosen_codes_unchanged():
    gen = torch.Generator().manual_seed(0)
    latents = {m: torch.randn(3, 4, 8, generator=gen, dtype=torch.float64) for m in MODS}
    q, before, out = official_step(latents, csa=False, count_floor=1.0)
    for i, m in enumerate(MODS):
        chosen = torch.zeros(32, dtype=torch.bool)
        chosen[out.indices[m].flatten()] = True
        assert torch.equal(q.codebook[i, ~chosen], before[i, ~chosen]), m  # held, not divided by ~eps
        assert torch.all(q.ema_count[i, ~chosen] == 1.0)
        assert torch.equal(q.ema_sum[i, ~chosen], before[i, ~chosen])  # sum = codeword x floor
    assert float(q.codebook.abs().max()) < 10

    # a second step: held codes stay held (anchor = W / C), chosen codes keep learning
    again = q(latents)
    assert torch.isfinite(q.codebook).all() and float(q.codebook.abs().max()) < 10
    assert int(again.metrics["codes_used/video"]) >= int(out.metrics["codes_used/video"])

    # with CSA, as in the official preset: no explosion either; without the guard it explodes
    guarded, _, _ = official_step(latents, count_floor=1.0)
    assert float(guarded.codebook.abs().max()) < 10
    unguarded, _, _ = official_step(latents)
    assert float(unguarded.codebook.abs().max()) > 100


def test_guard_off_is_the_authors_update():
    gen = torch.Generator().manual_seed(1)
    latents = {m: torch.randn(3, 4, 8, generator=gen, dtype=torch.float64) for m in MODS}
    default, _, _ = official_step(latents)
    off, _, _ = official_step(latents, count_floor=0.0)
    for name, tensor in default.state_dict().items():
        assert torch.equal(tensor, off.state_dict()[name]), name


def test_trainer_flags_end_to_end_and_exact_resume(tmp_path, capsys):
    args = TINY + ["--codebook-init", "aligned-kmeans", "--count-floor", "1", "--checkpoint-every", "1"]
    summary = main(args + ["--out", str(tmp_path / "straight"), "--max-steps", "2"])
    printed = capsys.readouterr().out
    assert "codebook init aligned-kmeans" in printed and "max |codeword|" in printed
    assert summary["codes_recent/video"] > 0 and summary["max_abs_codeword/audio"] < 100
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert {"codes_recent/text", "codes_dead/video", "max_abs_codeword/audio"} <= lines[0].keys()
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["model"]["quantizer"]["codebook_init"] == "aligned-kmeans"

    # stop after 1 step, resume to 2: the init is in the checkpoint and does not run again
    main(args + ["--out", str(tmp_path / "split"), "--max-steps", "1"])
    first = load_file(ckpt.resolve_checkpoint(tmp_path / "split") / "tensors.safetensors")
    assert int(first["model/quantizer.initialized"]) == 1
    main(args + ["--out", str(tmp_path / "split"), "--max-steps", "2", "--resume"])
    a = load_file(ckpt.resolve_checkpoint(tmp_path / "straight") / "tensors.safetensors")
    b = load_file(ckpt.resolve_checkpoint(tmp_path / "split") / "tensors.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key



def test_the_summary_warns_about_a_collapsed_or_unshared_codebook():
    from codaar.train.loop import collapse_warnings

    modalities = ("video", "audio")
    healthy = {"codes_used/video": 90.0, "codes_used/audio": 75.0}
    assert collapse_warnings(healthy, {"agreement/video-audio": 0.8}, modalities, modalities, 800) == []
    collapsed = {"codes_used/video": 7.0, "codes_used/audio": 75.0}  # the authors' init before a reset
    warnings = collapse_warnings(collapsed, {"agreement/video-audio": 0.01}, modalities, modalities, 800)
    assert len(warnings) == 2
    assert "video codebook looks collapsed: 7 of 800 codes" in warnings[0]
    assert "video and audio choose the same code on 1.0% of frames" in warnings[1]
    assert collapse_warnings(collapsed, {}, ("audio",), modalities, 800) == []  # video not checked
    assert collapse_warnings({"codes_used/video": 3.0, "codes_used/audio": 3.0}, {}, modalities, modalities, 16) == []


def test_an_official_run_before_its_first_reset_is_reported_collapsed(tmp_path, capsys):
    """docs/findings.md §1 at a small size: with the authors' init, a few codes carry the modalities."""
    summary = main(TINY + ["--num-codes", "800", "--max-steps", "24", "--preset", "official",
                           "--out", str(tmp_path / "run")])
    assert any("codebook looks collapsed" in w for w in summary["warnings"]), summary
    assert "WARNING: the" in capsys.readouterr().out
    recommended = main(TINY + ["--num-codes", "800", "--max-steps", "24", "--out", str(tmp_path / "aligned")])
    assert not any("collapsed" in w for w in recommended["warnings"]), recommended["warnings"]
