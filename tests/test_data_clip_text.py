"""Per-clip text in the data format (schema version 2): container, files, loader, inspect, and the
error for each bad input."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from codaar.data import (
    DataFormatError,
    HashedTextFeaturizer,
    TriModalDataset,
    build_synthetic,
    caption_tokens,
    load_dataset,
    make_dataloader,
    read_manifest,
    validate,
    write_dataset,
)
from codaar.data.format import write_dataset_files
from tests.data_helpers import assert_names, edit_manifest, expect_load_error

SMALL = dict(num_pretrain=23, num_train=13, num_val=3, num_test=7)  # 46 clips


def captioned(seed: int = 0):
    """A small built-in set whose class prompts are swapped for per-clip captions of varied length."""
    data = build_synthetic(seed=seed, **SMALL)
    rng = np.random.default_rng(seed)
    words = "a dog barks loudly near the old wooden fence while cars pass by slowly".split()
    captions = [" ".join(words[: int(k)]) for k in rng.integers(1, len(words) + 1, size=data.num_clips)]
    tokens, mask = caption_tokens(captions, HashedTextFeaturizer(dim=24, max_tokens=data.segments, seed=seed))
    return dataclasses.replace(data, text_table=None, prompts=[], clip_text=tokens, clip_text_mask=mask,
                               clip_captions=captions)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_text") / "data"
    write_dataset(captioned(), root)
    return root


@pytest.fixture
def copy(pristine, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(pristine, target)
    return target


def test_caption_tokens_mask_counts_the_real_tokens():
    featurizer = HashedTextFeaturizer(dim=16, max_tokens=6)
    captions = ["dog", "a dog barks", "one two three four five six seven eight", "a dog barks", "Dog!"]
    tokens, mask = caption_tokens(captions, featurizer)
    assert tokens.shape == (5, 6, 16) and tokens.dtype == np.float32 and mask.dtype == bool
    assert mask.sum(axis=1).tolist() == [1, 3, 6, 3, 1]  # truncated at 6 tokens
    for i, caption in enumerate(captions):
        assert np.array_equal(tokens[i], featurizer(caption))
    assert not tokens[~mask].any()  # padding is zero
    empty_tokens, empty_mask = caption_tokens([], featurizer)
    assert empty_tokens.shape == (0, 6, 16) and empty_mask.shape == (0, 6)


def test_in_memory_per_clip_text():
    data = captioned()
    validate(data)
    assert data.text_kind == "per-clip" and data.modalities == ("audio", "video", "text")
    assert data.feature_shape("text") == (24,)
    clips = np.array([9, 2, 30])
    assert np.array_equal(data.text(clips), data.clip_text[clips])
    assert np.array_equal(data.text_mask(clips), data.clip_text_mask[clips])
    assert "text per clip: (46, 10, 24)" in data.summary()
    prompts = build_synthetic(**SMALL)
    assert prompts.text_kind == "class-prompt"
    assert prompts.text_mask(clips).shape == (3, 10) and prompts.text_mask(clips).all()
    assert prompts.text_mask(4).shape == (10,)
    no_text = dataclasses.replace(prompts, text_table=None)
    assert no_text.text_kind is None and no_text.modalities == ("audio", "video")
    with pytest.raises(KeyError, match="no text"):
        no_text.text_mask(clips)


def test_round_trip_schema_2(pristine):
    data, original = load_dataset(pristine), captioned()
    manifest = read_manifest(pristine)
    assert manifest["schema_version"] == 2 and manifest["text_kind"] == "per-clip"
    assert manifest["arrays"]["text_clips"] == {"file": "text_clips.npy", "shape": [46, 10, 24], "dtype": "float32"}
    assert manifest["arrays"]["text_mask"] == {"file": "text_mask.npy", "shape": [46, 10], "dtype": "bool"}
    assert "text" not in manifest["arrays"] and manifest["prompts"] == []
    assert isinstance(data.clip_text, np.memmap) and isinstance(data.clip_text_mask, np.memmap)
    assert np.array_equal(data.clip_text, original.clip_text)
    assert np.array_equal(data.clip_text_mask, original.clip_text_mask)
    assert data.clip_captions == original.clip_captions and data.text_kind == "per-clip"


def test_loader_items_carry_the_mask(pristine):
    data = load_dataset(pristine)
    dataset = TriModalDataset(pristine, "train")
    item = dataset[5]
    clip = int(item["index"])
    assert item["text"].shape == (10, 24) and item["text_mask"].dtype == torch.bool
    assert torch.equal(item["text"], torch.from_numpy(np.array(data.clip_text[clip])))
    assert torch.equal(item["text_mask"], torch.from_numpy(np.array(data.clip_text_mask[clip])))
    batch = next(iter(make_dataloader(pristine, "pretrain", batch_size=8, seed=3)))
    assert batch["text_mask"].shape == (8, 10) and batch["text_mask"].dtype == torch.bool
    expected = np.array(data.clip_text_mask[batch["index"].numpy()])
    assert torch.equal(batch["text_mask"], torch.from_numpy(expected))
    audio_only = next(iter(make_dataloader(pristine, "val", batch_size=2, modalities=("audio",))))
    assert "text_mask" not in audio_only
    prompts = next(iter(make_dataloader(build_synthetic(**SMALL), "val", batch_size=3, shuffle=False)))
    assert prompts["text_mask"].shape == (3, 10) and prompts["text_mask"].all()


def test_version_1_folders_load_unchanged(tmp_path):
    # A folder as schema version 1 wrote it: no text_kind in the manifest.
    root = tmp_path / "v1"
    original = build_synthetic(**SMALL)
    write_dataset(original, root)
    edit_manifest(root, lambda m: (m.update(schema_version=1), m.pop("text_kind")))
    data = load_dataset(root)
    assert data.text_kind == "class-prompt" and data.clip_text is None
    assert np.array_equal(data.text_table, original.text_table) and np.array_equal(data.audio, original.audio)
    assert np.array_equal(data.text(np.arange(5)), original.text_table[original.category[:5]])


def test_streaming_writer_prefills_text_memmaps(tmp_path):
    from numpy.lib.format import open_memmap

    data = captioned(seed=1)
    folder = tmp_path / "stream"
    folder.mkdir()
    audio = open_memmap(folder / "audio.npy", mode="w+", dtype=np.float32, shape=data.audio.shape)
    text = open_memmap(folder / "text_clips.npy", mode="w+", dtype=np.float32, shape=data.clip_text.shape)
    mask = open_memmap(folder / "text_mask.npy", mode="w+", dtype=bool, shape=data.clip_text_mask.shape)
    audio[:], text[:], mask[:] = data.audio, data.clip_text, data.clip_text_mask
    for array in (audio, text, mask):
        array.flush()
    streamed = dataclasses.replace(data, audio=audio, clip_text=text, clip_text_mask=mask)
    write_dataset_files(streamed, folder, already_written=frozenset({"audio", "text_clips", "text_mask"}))
    loaded = load_dataset(folder)
    assert np.array_equal(loaded.clip_text, data.clip_text)
    assert np.array_equal(loaded.clip_text_mask, data.clip_text_mask)


def test_inspect_shows_per_clip_text(pristine, capsys):
    from codaar.data.__main__ import main

    assert main(["inspect", str(pristine)]) == 0
    shown = capsys.readouterr().out
    assert "schema 2" in shown and "text: per-clip" in shown and "text per clip: (46, 10, 24)" in shown
    assert "caption[0]: " in shown and "prompt[0]" not in shown


# ------------------------------------------------------------------------------------------ errors
def test_both_kinds_of_text_are_refused():
    data = dataclasses.replace(captioned(), text_table=build_synthetic(**SMALL).text_table)
    with pytest.raises(DataFormatError) as err:
        validate(data)
    assert_names(err, "<in memory>", "text_clips", "either per-clip text or a class-prompt table", "both")


@pytest.mark.parametrize("drop", ["clip_text", "clip_text_mask"])
def test_text_without_mask_and_mask_without_text(drop):
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(captioned(), **{drop: None}))
    missing = "text_clips" if drop == "clip_text" else "text_mask"
    assert_names(err, "<in memory>", missing, "both text_clips and text_mask", f"without {missing}")


def test_tokens_must_match_segments():
    data = captioned()
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, clip_text=data.clip_text[:, :7], clip_text_mask=data.clip_text_mask[:, :7]))
    assert_names(err, "<in memory>", "text_clips", "shape (46, 10, features)", "shape (46, 7, 24)")


def test_bad_masks():
    data = captioned()
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, clip_text_mask=data.clip_text_mask.astype(np.uint8)))
    assert_names(err, "<in memory>", "text_mask", "bool array of shape (46, 10)", "dtype uint8")
    empty = data.clip_text_mask.copy()
    empty[17] = False
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, clip_text_mask=empty))
    assert_names(err, "<in memory>", "text_mask", "at least one real token per clip", "first: clip 17")
    holes = data.clip_text_mask.copy()
    holes[21, :] = True
    holes[21, 4] = False
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, clip_text_mask=holes))
    assert_names(err, "<in memory>", "text_mask", "real tokens first, then padding", "first: clip 21")


def test_bad_captions_and_prompts():
    data = captioned()
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, clip_captions=data.clip_captions[:-1]))
    assert_names(err, "<in memory>", "captions", "a list of 46 strings", "45 entries")
    with pytest.raises(DataFormatError) as err:
        validate(dataclasses.replace(data, prompts=["one prompt"]))
    assert_names(err, "<in memory>", "prompts", "10 prompts", "1")
    with pytest.raises(DataFormatError) as err:  # class prompts are still required without per-clip text
        validate(dataclasses.replace(build_synthetic(**SMALL), prompts=[]))
    assert_names(err, "<in memory>", "prompts", "10 prompts", "0")


def test_wrong_mask_file(copy):
    np.save(copy / "text_mask.npy", np.ones((46, 10), np.float32))
    expect_load_error(copy, copy / "text_mask.npy", "text_mask", "dtype bool (from the manifest)", "dtype float32")
    edit_manifest(copy, lambda m: m["arrays"]["text_mask"].update(dtype="float32"))
    expect_load_error(copy, copy / "text_mask.npy", "text_mask", "bool array of shape (46, 10)", "dtype float32")


def test_nan_in_clip_text(copy):
    text = np.load(copy / "text_clips.npy")
    text[3, 1, 2] = np.nan
    np.save(copy / "text_clips.npy", text)
    expect_load_error(copy, copy / "text_clips.npy", "text_clips", "finite values", "nan at index [3, 1, 2]")


def test_manifest_text_kind_checks(copy):
    edit_manifest(copy, lambda m: m["arrays"].pop("text_mask"))
    expect_load_error(copy, copy / "manifest.json", "arrays.text_mask", "an entry for the text_mask array", "missing")
    edit_manifest(copy, lambda m: m.update(text_kind="captions"))
    expect_load_error(copy, copy / "manifest.json", "text_kind", "one of ['class-prompt', 'per-clip'] or null",
                      "'captions'")


def test_manifest_text_kind_must_match_the_arrays(copy):
    edit_manifest(copy, lambda m: m.update(text_kind=None))
    expect_load_error(copy, copy / "manifest.json", "text_kind", "'per-clip' (the text arrays listed)", "None")


def test_unreadable_captions(copy):
    (copy / "captions.json").write_text("[not json")
    expect_load_error(copy, copy / "captions.json", "captions", "valid UTF-8 JSON", "unreadable JSON")
    (copy / "captions.json").write_text(json.dumps(["only one"]))
    expect_load_error(copy, copy / "captions.json", "captions", "a list of 46 strings", "1 entries")
