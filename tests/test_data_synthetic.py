"""The built-in synthetic data set: determinism, shapes, labels, learnability."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codaar.data import BACKGROUND, build_synthetic, load_dataset, synthetic_config, video_level_class, write_synthetic

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
    args = [sys.executable, "-m", "codaar.data", "synth", str(out), "--seed", "1", "--no-progress",
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


# ------------------------------------------------------------------------- the presets stay as they were
# Taken from the generator before the hard preset existed (commit a5a5020): labels and class draws
# bit for bit, features at fixed positions and in sum (float tolerance: BLAS may differ across CPUs).
GOLDEN = {
    "default": (dict(), {
        "category": "594fadc1c202638a4822481e85b87cf501557ada2ba67005621a61273d48a56e",
        "labels.segment": "7325965b30776144fad47d5a4d5541ea2e17f2d12146f75170fcb8dad0beb237",
        "audio": ([-0.4585328698158264, 2.5922152996063232, 0.2127770632505417, 0.20376864075660706,
                   -0.12173987925052643, -0.6802565455436707, -0.2536694407463074, 0.6545947790145874],
                  -42470.83121998416),
        "video": ([0.7345532774925232, -1.492591142654419, -0.19101016223430634, 0.8474732637405396,
                   -0.5676658153533936, 0.4168896973133087, -0.7151065468788147, 0.6556371450424194],
                  -36154.44096772534),
        "text": ([-0.21440540254116058, -0.06424029171466827, 1.264591932296753, 0.5684245824813843,
                  0.8997281789779663, -0.09684689342975616, 2.613081932067871, 1.789095401763916],
                 1807.9000171669468)}),
    "avvp": (dict(preset="avvp", num_pretrain=300, num_train=200, num_val=40, num_test=100), {
        "category": "186c2d7cec223b1555a4fc9f4f41de9db8264e84c059ebe6ef20cc2b9de5ce6c",
        "labels.segment": "c9f3bed7f460f6483f2c86e91a8ff07b448ab6756267464a359586581188a3b8",
        "labels.audio": "73af31861a66a9a6af6cb1c5a5d8ee67409e2337d9f32434101b0167379f43c2",
        "labels.video": "4df8aa87d7d0bda3c182c489833747f3f9736653a6cdfb2f4a1476b4e9bdb99d",
        "audio": ([0.08480552583932877, -0.4601597189903259, 0.1874261349439621, -0.07706185430288315,
                   -1.0914790630340576, -0.9878492951393127, 0.2468688040971756, 1.0081952810287476],
                  -7561.606478256781),
        "video": ([-0.06603504717350006, -0.4912855625152588, -0.47991523146629333, 0.4071979224681854,
                   -0.46890968084335327, 0.7930466532707214, 1.1809860467910767, 0.4086526334285736],
                  4414.047089075092)}),
    "paper": (dict(preset="paper", num_pretrain=8, num_train=4, num_val=2, num_test=2), {
        "category": "e6c56284448851e298d68167af5b1ab67a9c5c149a7da753cf77e4c4cabc754e",
        "labels.segment": "d2c1c8759615d3f153aab63ca337d808b09733c1a66004194563cb8855a714bc",
        "audio": ([-0.9845428466796875, 1.1755931377410889, -0.8412091135978699, 0.119076207280159,
                   0.8378385305404663, 0.3113825023174286, 0.6707672476768494, 0.2710682153701782],
                  208.0513534392594),
        "video": ([0.17387992143630981, 0.0, 0.0, 0.0, 0.945485532283783, 0.05047014355659485,
                   0.0012327468721196055, 0.0], 2667189.754371653),
        "text": ([0.04977789148688316, 0.48848432302474976, -0.34728410840034485, -0.11286995559930801,
                  -0.032143913209438324, -0.4222857654094696, 0.10708492249250412, 0.6442722082138062],
                 9734.537664825537)}),
}


@pytest.mark.parametrize("preset", sorted(GOLDEN))
def test_existing_presets_are_unchanged(preset):
    overrides, expected = GOLDEN[preset]
    data = build_synthetic(**overrides)
    arrays = {"category": data.category, "audio": data.audio, "video": data.video, "text": data.text_table,
              **{f"labels.{k}": v for k, v in data.labels.items()}}
    assert set(expected) <= set(arrays) and set(data.labels) == {k[7:] for k in expected if k.startswith("labels.")}
    for name, want in expected.items():
        if isinstance(want, str):  # integer draws and 0/1 labels: exact
            assert hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes()).hexdigest() == want, name
        else:
            flat = arrays[name].reshape(-1)
            at = np.random.default_rng(0).integers(flat.size, size=8)
            np.testing.assert_allclose(flat[at], want[0], rtol=1e-5, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(arrays[name].astype(np.float64).sum(), want[1], rtol=1e-6, err_msg=name)


# -------------------------------------------------------------------------------------- the hard preset
HARD_SMALL = dict(preset="hard", num_pretrain=300, num_train=200, num_val=40, num_test=160)


def test_hard_preset_has_the_default_sizes_and_per_clip_text():
    hard, default = synthetic_config("hard"), synthetic_config()
    for name in ("audio_dim", "video_shape", "text_tokens", "text_dim", "num_pretrain", "num_train", "num_val",
                 "num_test", "num_classes", "segments"):
        assert getattr(hard, name) == getattr(default, name), name
    data = build_synthetic(**HARD_SMALL)
    n = 700
    assert data.text_kind == "per-clip" and data.text_table is None and data.modalities == ("audio", "video", "text")
    assert data.clip_text.shape == (n, 10, 128) and data.clip_text.dtype == np.float32
    tokens = data.clip_text_mask.sum(1)
    assert tokens.min() >= 4 and tokens.max() == 10 and len(set(tokens.tolist())) >= 3  # padded captions
    assert len(data.clip_captions) == n and len(data.prompts) == 10
    names = data.class_names
    assert all(names[c] in caption for c, caption in zip(data.category, data.clip_captions))


def test_hard_preset_holds_out_templates_scenes_and_speakers():
    from codaar.data import synthetic as synth

    cfg = synthetic_config(**HARD_SMALL)
    data = build_synthetic(cfg)
    test = np.zeros(data.num_clips, bool)
    test[data.split("test")] = True
    frames = [t.format(event="@", scene="#") for t in synth.CAPTION_TEMPLATES]
    held_out_frames = frames[len(frames) - cfg.heldout_templates:]

    def frame(caption, c, scene):
        return caption.replace(data.class_names[c], "@").replace(scene, "#")

    scenes = [synth.scene_name(k) for k in range(cfg.background_kinds + cfg.heldout_background_kinds)]
    held_out_scenes = scenes[cfg.background_kinds:]
    used_scene = np.array([next(s for s in scenes if s in caption) for caption in data.clip_captions])
    used_frame = np.array([frame(cap, c, s) for cap, c, s in zip(data.clip_captions, data.category, used_scene)])
    assert set(used_frame) == set(frames)
    assert np.array_equal(np.isin(used_frame, held_out_frames), test)
    assert np.array_equal(np.isin(used_scene, held_out_scenes), test)

    world = synth._make_world(cfg)
    seen = cfg.nuisance_kinds - cfg.heldout_nuisance_kinds
    for start, block in synth._iter_blocks(cfg, world):
        in_test = test[start : start + len(block["category"])]
        for kind in block["nuisance_kind"]:  # audio's, video's
            assert np.array_equal(kind >= seen, in_test) and kind.max() < cfg.nuisance_kinds
        for distractor in block["distractor"]:
            assert not (distractor == block["category"]).any()


def test_hard_preset_events_are_misaligned_and_labels_are_audio_visual():
    data = build_synthetic(**HARD_SMALL)
    a, v, seg = data.labels["audio"], data.labels["video"], data.labels["segment"]
    clips = np.arange(data.num_clips)
    primary_a, primary_v = a[clips, :, data.category] > 0, v[clips, :, data.category] > 0
    onset_a, onset_v = primary_a.argmax(1), primary_v.argmax(1)
    assert 0.4 < (primary_a != primary_v).any(1).mean() < 0.9  # onset jitter of +-1 per modality
    assert np.abs(onset_a - onset_v).max() <= 2 and (primary_a & primary_v).any(1).all()
    # AVE's audio-visual event: audible and visible at once; the class is the clip's category.
    assert np.array_equal(seg[..., :-1], np.minimum(a, v)[..., :-1])
    assert np.array_equal(seg[..., -1] == 1, seg[..., :-1].sum(-1) == 0)
    assert np.array_equal(video_level_class(seg), data.category)
    # Second events (30% of clips) are only audible or only visible.
    audible, visible = a[..., :-1].max(1) > 0, v[..., :-1].max(1) > 0
    assert not (audible & visible & (np.arange(10) != data.category[:, None])).any()
    assert 0.08 < (audible & ~visible).any(1).mean() < 0.25 and 0.08 < (visible & ~audible).any(1).mean() < 0.25


def test_hard_preset_backgrounds_mislead_and_test_factors_shift():
    from codaar.data import synthetic as synth

    cfg = synthetic_config(preset="hard", num_pretrain=0, num_train=900, num_val=300, num_test=300)
    data = build_synthetic(cfg)
    distractor = np.concatenate([b["distractor"][0] for _, b in synth._iter_blocks(cfg, synth._make_world(cfg))])
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    y = data.labels["audio"].argmax(-1)  # per segment, background = column C
    x = data.audio
    event = y[train] < 10
    weights = _fit_linear(x[train][event], y[train][event], 10)
    # A probe trained on event segments reads the background segments as the distractor class.
    background = y[val] == 10
    predicted = _predict_linear(weights, x[val][background])
    hits = (predicted == np.broadcast_to(distractor[val][:, None], y[val].shape)[background]).mean()
    assert hits > 0.3, hits  # chance: 0.1
    # Clip class from time-pooled audio: learnable on seen factors, lower on the held-out test factors.
    pooled = x.max(axis=1)
    weights = _fit_linear(pooled[train], data.category[train], 10)
    seen = (_predict_linear(weights, pooled[val]) == data.category[val]).mean()
    held_out = (_predict_linear(weights, pooled[test]) == data.category[test]).mean()
    assert seen > 0.75 and 0.25 < held_out < seen - 0.05, (seen, held_out)


def _fit_linear(x, y, classes):
    design = np.hstack([x, np.ones((len(x), 1))])
    weights, *_ = np.linalg.lstsq(design, np.eye(classes)[y], rcond=None)
    return weights


def _predict_linear(weights, x):
    return (np.hstack([x, np.ones((len(x), 1))]) @ weights).argmax(1)


def test_hard_preset_is_deterministic_and_streams_like_memory(tmp_path):
    first = write_synthetic(tmp_path / "a", preset="hard", seed=2, **{k: v // 4 for k, v in SMALL.items()})
    write_synthetic(tmp_path / "b", preset="hard", seed=2, **{k: v // 4 for k, v in SMALL.items()})
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert {"text_clips.npy", "text_mask.npy", "captions.json"} <= set(folder_digest(tmp_path / "a"))
    memory = build_synthetic(preset="hard", seed=2, **{k: v // 4 for k, v in SMALL.items()})
    assert np.array_equal(memory.clip_text, first.clip_text) and np.array_equal(memory.audio, first.audio)
    assert memory.clip_captions == first.clip_captions
    assert set(first.labels) == {"segment", "audio", "video"}


def test_bad_hard_factors_are_refused():
    with pytest.raises(ValueError, match="onset_jitter"):
        synthetic_config("hard", min_event_segments=2)
    with pytest.raises(ValueError, match="text_tokens"):
        synthetic_config("hard", text_tokens=12)
    with pytest.raises(ValueError, match="segment_labels"):
        synthetic_config(segment_labels="both")
    with pytest.raises(ValueError, match="heldout_nuisance_kinds"):
        synthetic_config(nuisance_kinds=4, heldout_nuisance_kinds=4)
