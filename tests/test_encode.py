"""`python -m codaar.encode` and `CoDAARModel.from_checkpoint(...).encode(...)`: the same codes as the
evaluation's features, the files and manifest, one-line errors; and the evaluation with per-clip text
(the built-in `hard` preset: captions with padding)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from codaar.data import write_dataset
from codaar.encode.__main__ import main as encode_main
from codaar.evaluate.features import code_features, load_eval_data, load_pretrained
from codaar.evaluate.protocols import HeadSettings, Task, run_ave, run_avvp, run_retrieval
from codaar.model import CoDAARModel
from codaar.pretrained import inputs, text_mask
from codaar.run_folder.checkpoint import CheckpointError
from codaar.train import main as train_main

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--max-steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoderun") / "run"
    train_main(["--out", str(out), "--data-preset", "hard", *TINY])
    return out


@pytest.fixture(scope="module")
def loaded(hard_run):
    pretrained = load_pretrained(hard_run)
    return pretrained, load_eval_data(pretrained)


def read_codes(folder) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).with_suffix("").as_posix(): np.load(p, allow_pickle=False)
            for p in sorted(folder.rglob("*.npy"))}


def test_cli_api_and_evaluation_give_the_same_codes(loaded, hard_run, tmp_path, capsys):
    pretrained, data = loaded
    assert data.text_kind == "per-clip" and not np.asarray(data.clip_text_mask).all()  # captions with padding
    out = tmp_path / "codes"
    manifest = encode_main([str(hard_run), "--out", str(out), "--split", "test", "--with-quantized", "--with-rows",
                            "--batch-size", "256", "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    files = read_codes(out)
    clips = np.asarray(data.splits["test"])
    n, steps, model = len(clips), data.segments, pretrained.model
    assert manifest == json.loads((out / "manifest.json").read_text())
    meta = json.loads((pretrained.path / "meta.json").read_text())
    assert manifest["checkpoint"]["tensors_sha256"] == meta["tensors_sha256"]
    assert manifest["checkpoint"]["step"] == 3 and manifest["split"] == "test" and manifest["clips"] == n
    assert (manifest["num_codes"], manifest["dim"], manifest["segments"]) == (16, 32, steps)
    assert manifest["modalities"] == list(model.modalities) and manifest["written"] == ["indices", "quantized", "rows"]
    assert np.array_equal(files["clips"], clips) and list(files["clip_ids"]) == list(np.asarray(data.clip_ids)[clips])
    assert np.array_equal(files["text_mask"], data.text_mask(clips))
    for m in model.modalities:
        assert files[f"indices/{m}"].shape == (n, steps) and files[f"indices/{m}"].dtype == np.int64
        assert files[f"quantized/{m}"].shape == (n, steps, 32) and files[f"rows/{m}"].shape == (n, steps, 96)
        assert manifest["files"][f"indices/{m}"] == {"file": f"indices/{m}.npy", "shape": [n, steps], "dtype": "int64"}

    # the Python API on the same clips
    api = CoDAARModel.from_checkpoint(hard_run)
    found = api.encode({m: inputs(data, m, clips) for m in api.modalities}, text_mask(data, "text", clips))
    for m in api.modalities:
        assert torch.equal(torch.from_numpy(files[f"indices/{m}"]), found[m].indices), m
        assert torch.equal(torch.from_numpy(files[f"quantized/{m}"]), found[m].codes), m
        assert torch.equal(torch.from_numpy(files[f"rows/{m}"]), found[m].rows), m
        # the codeword and the full row are read at the index
        assert torch.equal(found[m].codes, api.quantizer.codes_from_indices(found[m].indices, m))
        # and the evaluation's features
        features = code_features(model, data, m, clips)
        assert torch.equal(features["indices"], found[m].indices), m
        assert torch.equal(features["x"], found[m].rows), m
    # the mask matters: reading the padding too gives other text codes
    unmasked = api.encode({"text": inputs(data, "text", clips)})["text"].indices
    assert not torch.equal(unmasked, found["text"].indices)


def test_a_subset_of_modalities_and_the_built_in_default_data(hard_run, tmp_path):
    out = tmp_path / "codes"
    manifest = encode_main([str(hard_run), "--out", str(out), "--modalities", "audio", "--no-progress"])
    assert manifest["modalities"] == ["audio"] and manifest["split"] is None and manifest["written"] == ["indices"]
    assert manifest["data"]["built_in"]["preset"] == "hard" and manifest["data"]["text_kind"] == "per-clip"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "clip_ids.npy", "clips.npy", "indices/audio.npy"]
    assert manifest["clips"] == np.load(out / "clips.npy").shape[0] > 120  # every clip of the data set
    assert not list(tmp_path.glob(".codes*"))  # nothing left beside the folder


def test_bad_inputs_give_one_line_errors(loaded, hard_run, tmp_path, capsys):
    pretrained, data = loaded
    no_text, small_audio = tmp_path / "no_text", tmp_path / "small_audio"
    write_dataset(replace(data, clip_text=None, clip_text_mask=None, clip_captions=None), no_text)
    write_dataset(replace(data, audio=np.zeros(data.audio.shape[:2] + (64,), np.float32)), small_audio)
    existing = tmp_path / "exists"
    existing.mkdir()
    cases = [
        ([str(tmp_path / "nothing")], "checkpoint: ", "no checkpoint here"),
        ([str(hard_run), "--data", str(no_text)], "expected modalities ['video', 'audio', 'text'], found "
                                                  "['audio', 'video']", None),
        ([str(hard_run), "--data", str(small_audio)], "field 'audio': expected [128] features per step", "found [64]"),
        ([str(hard_run), "--split", "nope"], "--split nope: data <built-in data set> has no such split", None),
        ([str(hard_run), "--batch-size", "0"], "setting 'batch_size': expected an integer >= 1, found 0", None),
        ([str(hard_run), "--device", "tpu"], "setting 'device': expected cpu, cuda or cuda:N", None),
    ]
    for args, message, also in cases:
        with pytest.raises(SystemExit) as exited:
            encode_main([*args, "--out", str(tmp_path / "codes"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and err.count("\n") == 0, err
        assert err.startswith("python -m codaar.encode: error: ") and message in err and (also is None or also in err)
    # a data set without text still encodes the modalities it has
    manifest = encode_main([str(hard_run), "--data", str(no_text), "--modalities", "video,audio", "--out",
                            str(tmp_path / "av"), "--no-progress"])
    assert manifest["modalities"] == ["video", "audio"] and manifest["data"]["text_kind"] is None
    with pytest.raises(SystemExit):
        encode_main([str(hard_run), "--out", str(existing), "--no-progress"])
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "codes").exists()
    # the module runs as a program; an error is one line, no traceback
    bad = subprocess.run([sys.executable, "-m", "codaar.encode", str(tmp_path / "nothing"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_api_checks_its_inputs(hard_run, tmp_path):
    model = CoDAARModel.from_checkpoint(hard_run)
    assert not model.training and model.quantizer.frozen
    audio, text = torch.randn(2, 10, 128), torch.randn(2, 10, 128)
    with pytest.raises(ValueError, match=r"'audio' features: expected a float tensor \[B, T, 128\], found"):
        model.encode({"audio": torch.randn(2, 10, 64)})
    with pytest.raises(ValueError, match="expected features of the model's modalities"):
        model.encode({"speech": audio})
    with pytest.raises(ValueError, match="expected the same"):
        model.encode({"audio": audio, "text": text[:1]})
    gap = torch.tensor([[True, False, True] + [False] * 7, [True] * 10])
    with pytest.raises(ValueError, match="real tokens first"):
        model.encode({"text": text}, gap)
    mask = torch.arange(10)[None, :] < torch.tensor([[3], [10]])
    out = model.encode({"audio": audio, "text": text}, mask)
    assert out["audio"].indices.shape == (2, 10) and out["text"].rows.shape == (2, 10, 96)
    # the padded tokens' values do not matter
    noisy = torch.where(mask[..., None], text, 9.0)
    assert torch.equal(model.encode({"text": noisy}, mask)["text"].indices, out["text"].indices)
    # a corrupt checkpoint is refused
    broken = tmp_path / "ckpt"
    folder = load_pretrained(hard_run).path
    broken.mkdir()
    (broken / "meta.json").write_text((folder / "meta.json").read_text())
    data = bytearray((folder / "tensors.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (broken / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        CoDAARModel.from_checkpoint(broken)


def test_evaluation_with_per_clip_text(loaded):
    pretrained, data = loaded
    task = Task(pretrained, data, data, "clean")
    fast = HeadSettings(lr=1e-3, batch_size=256, epochs=2)
    ave = run_ave(task, "text", ["audio", "video"], fast)
    avvp = run_avvp(task, "audio", ["text"], fast)
    assert 0 <= ave["audio"]["precision"] <= 100 and 0 <= avvp["text"]["f1"] <= 100
    ret = run_retrieval(task, [("audio", "video"), ("text", "audio"), ("video", "text")])
    # per-clip captions: the relevant item is the clip itself, as for audio <-> video
    assert {ret[k]["relevance"] for k in ("audio->video", "text->audio", "video->text")} == {"instance"}
    assert "per-clip text" in ret["_info"]["definition"]
