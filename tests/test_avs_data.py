"""The AVSBench-S4 reader on tiny generated folders, bad files included, and the built-in avs preset."""

import hashlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from codaar.data import DataFormatError
from codaar.data.avs_synthetic import AVSSyntheticConfig, write_avs_synthetic
from codaar.data.avsbench import load_avsbench, vggish_embedder

TINY = AVSSyntheticConfig(num_train=3, num_val=2, num_test=2, image_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("avs") / "set"
    write_avs_synthetic(root, TINY)
    return root


@pytest.fixture
def copy(tiny, tmp_path):
    target = tmp_path / "set"
    shutil.copytree(tiny, target)
    return target


def first(root, split="train"):
    line = next(r for r in (root / "s4_meta_data.csv").read_text().splitlines()[1:] if r.endswith(split))
    name, category, _ = line.split(",")
    return name, category


def test_reads_the_layout(tiny):
    data = load_avsbench(tiny, image_size=32)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 3, "val": 2, "test": 2}
    frames = data.frames(np.arange(data.num_clips))
    masks, valid = data.masks(np.arange(data.num_clips))
    assert frames.shape == (7, 5, 32, 32, 3) and frames.dtype == np.uint8
    assert masks.shape == (7, 5, 32, 32) and set(np.unique(masks)) <= {0.0, 1.0}
    train, held = data.splits["train"], np.concatenate([data.splits["val"], data.splits["test"]])
    assert valid[train].sum(1).tolist() == [1, 1, 1] and valid[held].all()  # train: the first frame's mask only
    assert (masks[train][:, 1:] == 0).all() and (masks[held].sum((2, 3)) > 0).all()
    assert data.audio.shape == (7, 5, 128) and data.text(np.arange(7)).shape == (7, 10, 128)
    # frames resized on reading
    assert load_avsbench(tiny, image_size=20).frames(np.array([0])).shape == (1, 5, 20, 20, 3)


def test_same_seed_same_bytes_and_prompts_match_the_default_preset(tiny, tmp_path):
    again = write_avs_synthetic(tmp_path / "again", TINY)
    for name in ("s4_meta_data.csv", "text_features.npy", "prompts.csv"):
        assert hashlib.sha256((tiny / name).read_bytes()).digest() == hashlib.sha256(
            (tmp_path / "again" / name).read_bytes()).digest()
    from codaar.data import build_synthetic

    default = build_synthetic(num_pretrain=0, num_train=4, num_val=0, num_test=0)
    np.testing.assert_array_equal(again.text_table, default.text_table)  # the class prompts a model was trained on
    assert [n.replace("_", " ") for n in again.class_names] == list(default.class_names)


def test_audio_is_the_default_worlds_and_carries_the_class():
    data = write_avs_synthetic_in_memory(AVSSyntheticConfig(num_train=120, num_val=0, num_test=60, image_size=16))
    train, test = data.splits["train"], data.splits["test"]
    x = data.audio.mean(1)
    means = np.stack([x[train][data.category[train] == c].mean(0) for c in range(10)])
    guess = np.argmin(((x[test][:, None] - means[None]) ** 2).sum(-1), 1)
    assert (guess == data.category[test]).mean() > 0.8


def write_avs_synthetic_in_memory(cfg):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        data = write_avs_synthetic(f"{folder}/set", cfg)
        data.audio.setflags(write=False)
        return data


def test_wrong_class_object_is_elsewhere(tiny):
    data = load_avsbench(tiny, image_size=32)
    frames = data.frames(data.splits["test"]).astype(float)
    masks, _ = data.masks(data.splits["test"])
    inside = frames[masks > 0].mean(0)
    assert np.abs(inside - frames[masks == 0].mean(0)).max() > 20  # the object is visible against the rest


@pytest.mark.parametrize("case, match", [
    ("no meta", r"s4_meta_data.csv: field 'meta': expected the AVSBench-S4 meta CSV .* no such file"),
    ("bad header", r"s4_meta_data.csv: field 'header': expected columns name .*missing \['split'\]"),
    ("bad split", r"s4_meta_data.csv: field 'line 2: split': expected one of \['train', 'val', 'test'\], found 'dev'"),
    ("duplicate", r"s4_meta_data.csv: field 'line 3: name': expected a clip name used once"),
    ("unknown category", r"s4_meta_data.csv: field 'category': expected categories of prompts.csv, found \['ufo'\]"),
    ("missing frame", r"_3.png: field 'image': expected a frame or mask image, found no such file"),
    ("corrupt frame", r"_2.png: field 'image': expected a readable PNG or JPEG, found unreadable"),
    ("missing mask", r"gt_masks/.*_1.png: field 'image': expected a mask image, found no such file"),
    ("audio shape", r"audio_features/.*\.npy: field 'audio': expected shape \[5, 128\], found shape \[4, 128\]"),
    ("audio nan", r"audio_features/.*\.npy: field 'audio': expected finite values \[5, 128\], found NaN or Inf"),
    ("audio pickle", r"audio_features/.*\.npy: field 'audio': expected a .npy array \[5, 128\], found unreadable"),
    ("no prompts", r"prompts.csv: field 'prompts': expected a CSV category,prompt .* no such file"),
    ("text shape", r"text_features.npy: field 'text_features': expected shape \[10 categories, L, Dt\], found "
                   r"shape \[9, 10, 128\]"),
])
def test_bad_files_are_named(copy, case, match):
    name, category = first(copy)
    meta = copy / "s4_meta_data.csv"
    lines = meta.read_text().splitlines()
    audio = copy / "audio_features" / "train" / category / f"{name}.npy"
    if case == "no meta":
        meta.unlink()
    elif case == "bad header":
        meta.write_text("\n".join(["name,category,part"] + lines[1:]))
    elif case == "bad split":
        meta.write_text("\n".join([lines[0], lines[1].rsplit(",", 1)[0] + ",dev"] + lines[2:]))
    elif case == "duplicate":
        meta.write_text("\n".join(lines[:2] + [lines[1]] + lines[2:]))
    elif case == "unknown category":
        meta.write_text("\n".join(lines + ["x1,ufo,test"]))
    elif case == "missing frame":
        (copy / "visual_frames" / "train" / category / name / f"{name}_3.png").unlink()
    elif case == "corrupt frame":
        (copy / "visual_frames" / "train" / category / name / f"{name}_2.png").write_bytes(b"\x89PNG garbage")
    elif case == "missing mask":
        (copy / "gt_masks" / "train" / category / name / f"{name}_1.png").unlink()
    elif case == "audio shape":
        np.save(audio, np.zeros((4, 128), np.float32))
    elif case == "audio nan":
        np.save(audio, np.full((5, 128), np.nan, np.float32))
    elif case == "audio pickle":
        np.save(audio, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "no prompts":
        (copy / "prompts.csv").unlink()
    elif case == "text shape":
        np.save(copy / "text_features.npy", np.zeros((9, 10, 128), np.float32))
    with pytest.raises(DataFormatError, match=match):
        data = load_avsbench(copy, image_size=32)
        data.frames(np.arange(data.num_clips))
        data.masks(np.arange(data.num_clips))


def test_log_mel_audio_through_vggish(copy, tmp_path):
    from safetensors.torch import save_file

    from codaar.data.extract.vggish import VGGish

    torch.manual_seed(0)
    weights = tmp_path / "vggish.safetensors"
    save_file({k: v.contiguous() for k, v in VGGish().state_dict().items()}, str(weights))
    shutil.move(copy / "audio_features", tmp_path / "features")
    rng = np.random.default_rng(0)
    for line in (copy / "s4_meta_data.csv").read_text().splitlines()[1:]:
        name, category, split = line.split(",")
        folder = copy / "audio_log_mel" / split / category
        folder.mkdir(parents=True, exist_ok=True)
        array = rng.standard_normal((5, 1, 96, 64)).astype(np.float32)
        if split == "train":  # the release's pickles (numpy arrays here) read through the allow-list
            (folder / f"{name}.pkl").write_bytes(pickle.dumps(array))
        else:
            np.save(folder / f"{name}.npy", array[:, 0])
    with pytest.raises(DataFormatError, match=r"audio_log_mel.*expected VGGish weights .* none given"):
        load_avsbench(copy, image_size=32)
    data = load_avsbench(copy, image_size=32, embed_log_mel=vggish_embedder(weights))
    assert data.audio.shape == (7, 5, 128) and np.isfinite(data.audio).all()
    name, category = first(copy)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (copy / "audio_log_mel" / "train" / category / f"{name}.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataFormatError, match=rf"{name}.pkl"):
        load_avsbench(copy, image_size=32, embed_log_mel=vggish_embedder(weights))


def test_synth_cli_writes_the_avs_preset_and_refuses_other_sizes(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "codaar.data", "synth", str(out), "--preset", "avs", "--num-train",
                           "2", "--num-val", "1", "--num-test", "1", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "AVSBench-S4 layout: 4 clips (train 2, val 1, test 1)" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "codaar.data", "synth", str(tmp_path / "x"), "--preset", "avs",
                          "--audio-dim", "64"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--audio-dim: expected none" in bad.stderr
