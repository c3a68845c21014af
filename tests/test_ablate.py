"""The ablation runner on a micro configuration: trains, scores, and writes its tables."""

import json
import shutil

import pytest
import torch

from codaar import ablate


def test_variant_flags_and_studies():
    assert ablate.variant_flags("unimodal") == ["--no-dta", "--no-csa", "--no-dqa", "--no-cpc"]
    assert ablate.variant_flags("cascade-a-v-t") == ["--cascade", "audio,video,text"]
    assert len(ablate.study_variants(["cascade"], ("video", "audio", "text"))) == 6
    assert ablate.variant_flags("no-csa+init-official") == ["--no-csa", "--codebook-init", "official"]
    with pytest.raises(ablate.AblationError, match="unknown variant 'nope'"):
        ablate.variant_flags("no-csa+nope")
    with pytest.raises(ablate.AblationError, match="unknown variant"):
        ablate.variant_flags("no-such")


def test_micro_ablation_writes_tables(tmp_path):
    out = tmp_path / "abl"
    payload = ablate.main(["--variants", "full,no-csa", "--seeds", "1", "--steps", "2", "--dim", "16",
                           "--num-codes", "8", "--temporal-ffn-dim", "32", "--text-lstm-dim", "8",
                           "--batch-size", "20", "--pretrain-clips", "40", "--ave-epochs", "1",
                           "--avvp-epochs", "1", "--jobs", "2", "--out", str(out)])
    assert set(payload["summary"]) == {"full", "no-csa"}
    text = (out / "ablation.md").read_text()
    assert "| full | 1 |" in text and "| no-csa | 1 |" in text and "AVE V->A" in text
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["variants"]["no-csa"] == ["--no-csa"]
    assert 0 <= saved["summary"]["full"]["ave precision V->A"]["mean"] <= 100
    assert (out / "runs" / "no-csa" / "seed1" / "checkpoints" / "latest").is_file()


def test_micro_recipe_curves(tmp_path):
    out = tmp_path / "recipes"
    payload = ablate.main(["--studies", "recipes", "--seeds", "1,2", "--steps", "4", "--dim", "16", "--num-codes", "8",
                           "--temporal-ffn-dim", "32", "--text-lstm-dim", "8", "--batch-size", "20",
                           "--pretrain-clips", "40", "--ave-epochs", "1", "--jobs", "2", "--curve", "--tasks", "ave",
                           "--train-args", "--checkpoint-every 2 --keep-checkpoints 5", "--out", str(out)])
    assert set(payload["summary"]) == {"preset-official", "preset-recommended"}
    assert set(payload["summary"]["preset-official"]) == {"transfer/ave @ 2", "transfer/ave @ 4", "steps_to_95"}
    text = (out / "curves.md").read_text()
    assert "| preset-recommended | 2 |" in text and "AVE @ 2" in text and "steps to 95%" in text


def test_a_killed_training_run_continues_to_the_uninterrupted_result(tmp_path):
    """A run the ablation left unfinished (killed after its step-2 checkpoint) is continued, not taken
    as finished and not started over: it ends where an uninterrupted run ends."""
    from safetensors.torch import load_file

    out = tmp_path / "abl"
    args = ["--variants", "full", "--seeds", "1", "--steps", "4", "--dim", "16", "--num-codes", "8",
            "--temporal-ffn-dim", "32", "--text-lstm-dim", "8", "--batch-size", "20", "--pretrain-clips", "40",
            "--ave-epochs", "1", "--tasks", "ave", "--train-args", "--checkpoint-every 2 --keep-checkpoints 5",
            "--out", str(out)]
    first = ablate.main(args)
    checkpoints = out / "runs" / "full" / "seed1" / "checkpoints"
    finished = load_file(checkpoints / "step-0000004" / "tensors.safetensors")
    shutil.rmtree(checkpoints / "step-0000004")  # the state a kill between the two checkpoints leaves
    (checkpoints / "latest").write_text("step-0000002\n")
    again = ablate.main(args)
    assert (checkpoints / "latest").read_text().strip() == "step-0000004"
    resumed = load_file(checkpoints / "step-0000004" / "tensors.safetensors")
    assert resumed.keys() == finished.keys()
    for key in finished:
        assert torch.equal(resumed[key], finished[key]), key
    assert again["summary"] == first["summary"]
