"""The built-in synthetic data set: determinism, shapes, labels, learnability."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codaar.data import (BACKGROUND, build_synthetic, load_dataset, synthetic_config, video_level_class,
                         write_synthetic)

SMALL = dict(num_pretrain=300, num_train=200, num_val=40, num_test=100)


def folder_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_shapes_and_splits():
    data = build_synthetic(**SMALL)
    n = sum(SMALL.values())
    assert data.audio.shape == (n, 10, 128) and data.audio.dtype == np.float32
    assert data.video.shape == (n, 10, 64)
    assert data.text_table.shape == (10, 10, 128)
    assert data.labels["segment"].shape == (n, 10, 11)
    assert data.label_classes["segment"][-1] == BACKGROUND
    assert {k: len(v) for k, v in data.splits.items()} == {"pretrain": 300, "train": 200, "val": 40, "test": 100}
    all_indices = np.concatenate(list(data.splits.values()))
    assert np.array_equal(np.sort(all_indices), np.arange(n))  # disjoint and complete
    assert len(data.class_names) == len(data.prompts) == 10
    assert data.text(np.array([0, 5])).shape == (2, 10, 128)


def test_default_preset_sizes_match_the_issue():
    cfg = synthetic_config()
    assert (cfg.audio_dim, cfg.video_shape, cfg.text_tokens, cfg.text_dim) == (128, (64,), 10, 128)
    assert cfg.num_pretrain == 3000 and cfg.num_classes == 10
    paper = synthetic_config("paper")
    assert (paper.audio_dim, paper.video_shape, paper.text_dim) == (128, (7, 7, 512), 768)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    first = write_synthetic(tmp_path / "a", seed=3, **SMALL)
    write_synthetic(tmp_path / "b", seed=3, **SMALL)
    write_synthetic(tmp_path / "c", seed=4, **SMALL)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert folder_digest(tmp_path / "a")["audio.npy"] != folder_digest(tmp_path / "c")["audio.npy"]
    # Streaming to disk and building in memory give the same data.
    memory = build_synthetic(seed=3, **SMALL)
    assert np.array_equal(memory.audio, first.audio) and np.array_equal(memory.video, first.video)
    assert np.array_equal(memory.labels["segment"], first.labels["segment"])
    assert isinstance(first.audio, np.memmap)


def test_cli_synth_and_inspect(tmp_path, capsys):
    out = tmp_path / "syn"
    args = [sys.executable, "-m", "codaar.data", "synth", str(out), "--seed", "1", "--quiet",
            "--num-pretrain", "64", "--num-train", "32", "--num-val", "8", "--num-test", "16", "--video-shape", "32"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    data = load_dataset(out)
    assert data.video.shape == (120, 10, 32) and data.info["seed"] == 1
    assert np.array_equal(data.audio, build_synthetic(seed=1, num_pretrain=64, num_train=32, num_val=8,
                                                      num_test=16, video_shape=(32,)).audio)
    shown = subprocess.run([sys.executable, "-m", "codaar.data", "inspect", str(out)],
                           check=True, capture_output=True, text=True).stdout
    assert "codaar-data schema 2" in shown and "pretrain=64" in shown and "finite check: passed" in shown
    # The remaining CLI paths in-process (each interpreter start costs seconds on a small machine).
    from codaar.data.__main__ import main

    assert main(args[3:]) == 2 and "already exists" in capsys.readouterr().err  # no --overwrite
    assert main(args[3:] + ["--overwrite", "--seed", "2"]) == 0 and load_dataset(out).info["seed"] == 2
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    help_text = capsys.readouterr().out
    assert "--preset" in help_text and "--seed" in help_text and "--video-shape" in help_text


def test_event_mask_is_one_contiguous_run_and_labels_are_consistent():
    data = build_synthetic(**SMALL)
    labels = data.labels["segment"]
    event = labels[..., :-1].sum(-1) > 0
    assert np.array_equal(labels[..., -1] == 1, ~event)  # background exactly where no event
    assert (labels[..., :-1].sum(-1) <= 1).all()  # one event per clip in the default preset
    runs = np.diff(np.pad(event.astype(int), ((0, 0), (1, 1))), axis=1)
    assert ((runs == 1).sum(1) == 1).all()  # exactly one contiguous run
    assert event.sum(1).min() >= 2
    # The event's class is the clip's category (the prompt used for text).
    assert np.array_equal(video_level_class(labels), data.category)


def test_avvp_variant_has_two_events_and_single_modality_ones():
    data = build_synthetic(preset="avvp", **SMALL)
    assert set(data.labels) == {"segment", "audio", "video"}
    a, v = data.labels["audio"], data.labels["video"]
    classes_a, classes_v = a[..., :-1].max(1), v[..., :-1].max(1)  # [N, C] clip-level presence
    assert (np.maximum(classes_a, classes_v).sum(1) == 2).all()  # two distinct classes per clip
    audible_only = (classes_a > classes_v).any(1).mean()
    visible_only = (classes_v > classes_a).any(1).mean()
    assert 0.1 < audible_only < 0.4 and 0.1 < visible_only < 0.4
    assert np.array_equal(data.labels["segment"][..., :-1], np.maximum(a, v)[..., :-1])
    assert np.array_equal(a[..., -1] == 1, a[..., :-1].sum(-1) == 0)


def test_paper_preset_shapes_small():
    data = build_synthetic(preset="paper", num_pretrain=8, num_train=4, num_val=2, num_test=2)
    assert data.video.shape == (16, 10, 7, 7, 512) and data.text_table.shape == (10, 10, 768)
    assert data.video.min() >= 0  # VGG pool5 maps are post-ReLU


def _linear_probe_accuracy(x_train, y_train, x_test, y_test, classes):
    design = np.hstack([x_train, np.ones((len(x_train), 1))])
    weights, *_ = np.linalg.lstsq(design, np.eye(classes)[y_train], rcond=None)
    predicted = (np.hstack([x_test, np.ones((len(x_test), 1))]) @ weights).argmax(1)
    return (predicted == y_test).mean()


def test_segment_class_recoverable_from_each_modality_but_modalities_differ():
    data = build_synthetic(num_pretrain=0, num_train=600, num_val=0, num_test=300)
    train, test = data.split("train"), data.split("test")
    y = data.labels["segment"].argmax(-1)  # background = column C
    for modality in ("audio", "video"):
        x = data.modality(modality)
        acc = _linear_probe_accuracy(x[train].reshape(-1, x.shape[-1]), y[train].ravel(),
                                     x[test].reshape(-1, x.shape[-1]), y[test].ravel(), 11)
        assert acc > 0.85, (modality, acc)
    # Modality-private nuisance: a large share of each modality's variance is not class information.
    for modality in ("audio", "video"):
        x = data.modality(modality).reshape(-1, data.modality(modality).shape[-1])
        labels = y.ravel()
        within = sum(x[labels == k].var(0).sum() * (labels == k).mean() for k in range(11))
        assert 0.3 < within / x.var(0).sum() < 0.9
    # Different maps: raw features are not comparable across modalities (class means of audio's
    # first 64 dims and of video's 64 dims are unrelated), so transfer needs learned alignment.
    mean_a = np.stack([data.audio[data.category == k].mean((0, 1))[:64] for k in range(10)])
    mean_v = np.stack([data.video[data.category == k].mean((0, 1)) for k in range(10)])
    assert abs(np.corrcoef(mean_a.ravel(), mean_v.ravel())[0, 1]) < 0.3


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="preset"):
        synthetic_config("nope")
    with pytest.raises(ValueError, match="event length"):
        synthetic_config(min_event_segments=5, max_event_segments=3)
    with pytest.raises(ValueError, match="video_shape"):
        synthetic_config(video_shape=(2, 2))
