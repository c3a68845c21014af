"""From a folder of video files with captions and labels to a trained model and exported codes, with
the commands of the README's "From videos to codes" section: extract, inspect, train --data,
evaluate, encode (random feature weights, T = 4 segments, 32x32 frames, a tiny model)."""

from __future__ import annotations

import json

import numpy as np
import torch

from codaar.data import load_dataset
from codaar.data.__main__ import main as data_main
from codaar.encode.__main__ import main as encode_main
from codaar.evaluate.__main__ import main as evaluate_main
from codaar.evaluate.features import code_features, load_pretrained
from codaar.train import main as train_main
from tests.extract_media import write_clip

CAPTIONS = ["a dog barks twice", "a bell rings", "a dog barks near a busy road at night", "bells",
            "the dog", "a church bell rings slowly in the rain", "a small dog barks", "one bell rings once"]


def test_a_folder_of_videos_becomes_a_model_and_its_codes(tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "more").mkdir(parents=True)
    names = [f"clip{i}" for i in range(len(CAPTIONS))]
    for i, name in enumerate(names):
        write_clip((videos / "more" if i % 2 else videos) / f"{name}.mp4", 3 + i % 3)  # 3-5 s, in two folders
    captions, labels = tmp_path / "captions.csv", tmp_path / "labels.csv"
    captions.write_text("clip_id,caption\n" + "".join(f"{n},{c}\n" for n, c in zip(names, CAPTIONS)))
    labels.write_text("clip_id,class\n" + "".join(f"{n},{'dog' if 'dog' in c else 'bell'}\n"
                                                   for n, c in zip(names, CAPTIONS)))
    data_dir, run, codes = tmp_path / "data", tmp_path / "run", tmp_path / "codes"

    # python -m codaar.data extract DATA VIDEOS --captions CSV --labels CSV ...
    assert data_main(["extract", str(data_dir), str(videos), "--captions", str(captions), "--labels", str(labels),
                      "--random-weights", "--segments", "4", "--frame-size", "32", "--video-pooling", "mean",
                      "--text-dim", "32", "--no-progress"]) == 0
    data = load_dataset(data_dir)
    assert data.text_kind == "per-clip" and data.num_clips == len(names) and data.class_names == ["bell", "dog"]
    mask = np.asarray(data.clip_text_mask)
    caption_of = dict(zip(names, CAPTIONS))
    tokens = [min(len(caption_of[clip].split()), 4) for clip in data.clip_ids]
    assert mask.sum(axis=1).tolist() == tokens and mask[:, 0].all()  # real tokens first, then padding
    assert data_main(["inspect", str(data_dir)]) == 0
    assert "text: per-clip" in capsys.readouterr().out

    # python -m codaar.train --data DATA --out RUN ...
    train_main(["--data", str(data_dir), "--out", str(run), "--dim", "32", "--num-codes", "16",
                "--temporal-ffn-dim", "64", "--text-lstm-dim", "16", "--batch-size", "4", "--max-steps", "3",
                "--no-progress"])
    # python -m codaar.evaluate RUN (the data the run was trained on)
    result = evaluate_main([str(run), "--ave-epochs", "2", "--avvp-epochs", "2", "--no-plots", "--threads", "1"])
    assert set(result["clean"]["ave"]["text"]) == {"video", "audio", "text"}
    assert result["retrieval"]["text->audio"]["relevance"] == "instance"  # per-clip captions: the clip itself
    # python -m codaar.encode RUN --out CODES (the data the run was trained on)
    manifest = encode_main([str(run), "--out", str(codes), "--no-progress"])
    assert manifest["data"]["folder"] == str(data_dir.resolve()) and manifest["clips"] == len(names)
    assert list(np.load(codes / "clip_ids.npy")) == list(data.clip_ids)
    assert np.array_equal(np.load(codes / "text_mask.npy"), mask)
    model = load_pretrained(run).model
    for m in model.modalities:
        indices = np.load(codes / "indices" / f"{m}.npy")
        assert indices.shape == (len(names), 4) and 0 <= indices.min() and indices.max() < 16
        expected = code_features(model, data, m, np.arange(len(names)))["indices"]
        assert torch.equal(torch.from_numpy(indices), expected), m
    assert json.loads((codes / "manifest.json").read_text())["checkpoint"]["step"] == 3
