"""The project's on-disk format: manifest schema, lazy loading, and the error for each bad input."""

import pickle
import shutil

import numpy as np
import pytest
import torch

from codaar.data import (
    SCHEMA_VERSION,
    DataFormatError,
    TriModalDataset,
    build_synthetic,
    load_dataset,
    make_dataloader,
    read_manifest,
    write_dataset,
)
from tests.data_helpers import assert_names, edit_manifest

SMALL = dict(num_pretrain=40, num_train=20, num_val=4, num_test=8)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt") / "data"
    write_dataset(build_synthetic(**SMALL), root)
    return root


@pytest.fixture
def copy(pristine, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(pristine, target)
    return target


def test_manifest_schema(pristine):
    manifest = read_manifest(pristine)
    assert manifest["format"] == "codaar-data" and manifest["schema_version"] == SCHEMA_VERSION == 2
    assert manifest["num_clips"] == 72 and manifest["segments"] == 10
    assert manifest["modalities"] == ["audio", "video", "text"] and manifest["text_kind"] == "class-prompt"
    assert len(manifest["class_names"]) == len(manifest["prompts"]) == 10
    assert manifest["arrays"]["audio"] == {"file": "audio.npy", "shape": [72, 10, 128], "dtype": "float32"}
    assert manifest["arrays"]["video"]["shape"] == [72, 10, 64]
    assert manifest["arrays"]["text"]["shape"] == [10, 10, 128]
    assert manifest["arrays"]["category"]["dtype"] == "int64"
    assert manifest["labels"]["segment"]["classes"][-1] == "background"
    assert manifest["splits"]["train"] == {"file": "splits/train.npy", "shape": [20], "dtype": "int64"}
    assert manifest["info"]["source"] == "synthetic"
    for entry in list(manifest["arrays"].values()) + list(manifest["splits"].values()):
        array = np.load(pristine / entry["file"], allow_pickle=False)  # plain .npy, no pickle needed
        assert list(array.shape) == entry["shape"]


def test_lazy_memory_mapped_loading_and_loader(pristine):
    data = load_dataset(pristine)
    assert isinstance(data.audio, np.memmap) and isinstance(data.video, np.memmap)
    assert not data.audio.flags.writeable
    dataset = TriModalDataset(pristine, "train", with_labels=True)
    state = pickle.dumps(dataset)  # what a worker process receives: no arrays, only the path
    assert len(state) < 10_000
    clone = pickle.loads(state)
    item = clone[3]
    clip = int(item["index"])
    assert clip == int(data.split("train")[3])
    assert torch.equal(item["audio"], torch.from_numpy(np.array(data.audio[clip])))
    assert torch.equal(item["text"], torch.from_numpy(np.array(data.text_table[data.category[clip]])))
    assert item["labels"].shape == (10, 11)
    loader = make_dataloader(pristine, "pretrain", batch_size=16, shuffle=True, seed=1)
    assert loader.pin_memory == torch.cuda.is_available()
    seen = torch.cat([b["index"] for b in loader])
    assert sorted(seen.tolist()) == list(range(40))
    again = torch.cat([b["index"] for b in make_dataloader(pristine, "pretrain", batch_size=16, seed=1)])
    assert torch.equal(seen, again)  # seeded shuffle
    batch = next(iter(make_dataloader(pristine, "test", batch_size=5, shuffle=False, num_workers=1)))
    assert torch.equal(batch["video"], torch.from_numpy(np.array(data.video[data.split("test")[:5]])))


def test_in_memory_dataset_loader():
    data = build_synthetic(**SMALL)
    batch = next(iter(make_dataloader(data, "val", batch_size=4, shuffle=False, modalities=("audio",))))
    assert set(batch) == {"index", "category", "audio"} and batch["audio"].shape == (4, 10, 128)


def test_wrong_shape(copy):
    np.save(copy / "audio.npy", np.zeros((72, 10, 100), np.float32))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "audio.npy", "audio", "shape (72, 10, 128)", "shape (72, 10, 100)")


def test_nan_and_inf(copy):
    video = np.load(copy / "video.npy")
    video[5, 2, 7] = np.nan
    np.save(copy / "video.npy", video)
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "video.npy", "video", "finite values", "nan at index [5, 2, 7]")
    audio = np.load(copy / "audio.npy")
    audio[1, 0, 0] = np.inf
    np.save(copy / "audio.npy", audio)
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "audio.npy", "audio", "finite values", "inf at index [1, 0, 0]")
    load_dataset(copy, check_finite=False)  # the scan can be skipped for trusted folders


def test_missing_modality_file(copy):
    (copy / "video.npy").unlink()
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "video.npy", "video", "an .npy file", "no such file")


def test_missing_modality_in_manifest(copy):
    edit_manifest(copy, lambda m: m["arrays"].pop("audio"))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "manifest.json", "arrays.audio", "an entry for the audio array", "missing")
    assert "missing modality" in str(err.value)


def test_missing_text_listed_in_modalities(copy):
    edit_manifest(copy, lambda m: m["arrays"].pop("text"))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "manifest.json", "arrays.text", "an entry for the text array", "missing")


def test_mismatched_clip_counts(copy):
    np.save(copy / "video.npy", np.zeros((70, 10, 64), np.float32))
    edit_manifest(copy, lambda m: m["arrays"]["video"].update(shape=[70, 10, 64]))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "video.npy", "video", "72 clips (as in audio)", "70 clips")


def test_unknown_schema_version(copy):
    edit_manifest(copy, lambda m: m.update(schema_version=99))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "manifest.json", "schema_version", "1 or 2", "99")
    assert "unknown schema version" in str(err.value)


def test_truncated_file(copy):
    path = copy / "audio.npy"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    full = 128 + 72 * 10 * 128 * 4
    assert_names(err, path, "audio", f"{full} bytes", f"{full - 1000} bytes (truncated file)")


def test_garbled_header_and_bad_json(copy):
    (copy / "category.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "category.npy", "category", "a valid .npy header", "unreadable header")
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "manifest.json", "manifest.json", "valid UTF-8 JSON", "unreadable JSON")


def test_out_of_range_category_and_split(copy):
    category = np.load(copy / "category.npy")
    category[3] = 10
    np.save(copy / "category.npy", category)
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "category.npy", "category", "class indices in [0, 10)", "range [0, 10]")


def test_split_index_out_of_range(copy):
    np.save(copy / "splits" / "train.npy", np.arange(60, 80, dtype=np.int64))
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "splits" / "train.npy", "splits.train", "clip indices in [0, 72)", "range [60, 79]")


def test_object_arrays_are_refused(copy):
    np.save(copy / "category.npy", np.array([object()] * 72, dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError) as err:
        load_dataset(copy)
    assert_names(err, copy / "category.npy", "category", "numeric", "object")


def test_failed_write_leaves_nothing(tmp_path):
    data = build_synthetic(**SMALL)
    data.audio[0, 0, 0] = np.nan
    with pytest.raises(DataFormatError) as err:
        write_dataset(data, tmp_path / "out")
    assert_names(err, "<in memory>", "audio", "finite values", "nan at index [0, 0, 0]")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_atomically(tmp_path):
    out = tmp_path / "out"
    write_dataset(build_synthetic(seed=1, **SMALL), out)
    with pytest.raises(FileExistsError):
        write_dataset(build_synthetic(seed=2, **SMALL), out)
    write_dataset(build_synthetic(seed=2, **SMALL), out, overwrite=True)
    assert load_dataset(out).info["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
