"""Import of the authors' layout: zips of pickles, CSVs, labels, safety and atomicity."""

import csv
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from codaar.data import DataFormatError, fit_segments, import_official, load_array, load_dataset, read_zipped_array

VIDEO_SHAPE = (2, 2, 8)  # small stand-in for 7x7x512 (shape is a parameter of the import)
CLASSES = ["dog barking", "church bell", "train horn"]


def write_zip(path: Path, array=None, members=None, protocol=4):
    """A per-video zip as the authors store it: members whose names contain '.pkl'."""
    members = members if members is not None else [("features.pkl", pickle.dumps(array, protocol=protocol))]
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members:
            archive.writestr(name, payload)


def make_layout(root: Path, rows, audio_rows=None, video_rows=None):
    """meta CSV + audio/video zip folders + prompt CSV; returns the CLI-style keyword arguments."""
    audio_dir, video_dir = root / "audio", root / "video"
    audio_dir.mkdir(parents=True)
    video_dir.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "meta.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["category", "video_id", "split"])
        writer.writerows(rows)
    for _, video_id, _ in rows:
        t_a = (audio_rows or {}).get(video_id, 10)
        t_v = (video_rows or {}).get(video_id, 10)
        write_zip(audio_dir / f"{video_id}.zip", rng.standard_normal((t_a, 128)).astype(np.float32))
        write_zip(video_dir / f"{video_id}.zip", rng.random((t_v,) + VIDEO_SHAPE).astype(np.float32))
    with open(root / "prompts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "prompt"])
        for name in CLASSES:
            writer.writerow([name, f"The sound of a {name} in the distance"])
    return dict(meta_csv=root / "meta.csv", audio_dir=audio_dir, video_dir=video_dir, prompts_csv=root / "prompts.csv")


ROWS = [("dog barking", "AAAAAAAAAAA", "train"), ("church bell", "BBBBBBBBBBB", "train"),
        ("train horn", "CCCCCCCCCCC", "test"), ("dog barking", "DDDDDDDDDDD", "val")]


def run_import(layout, out, **kwargs):
    return import_official(**layout, out=out, video_shape=VIDEO_SHAPE, progress=False, **kwargs)


def assert_nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


def test_import_round_trip_with_padding_and_truncation(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS, audio_rows={"BBBBBBBBBBB": 7}, video_rows={"CCCCCCCCCCC": 12})
    data = run_import(layout, tmp_path / "out")
    assert data.audio.shape == (4, 10, 128) and data.video.shape == (4, 10) + VIDEO_SHAPE
    assert list(data.clip_ids) == [r[1] for r in ROWS]
    assert data.class_names == sorted(CLASSES)
    assert data.prompts[data.class_names.index("train horn")] == "The sound of a train horn in the distance"
    assert data.text_table.shape == (3, 10, 768)
    assert [data.class_names[c] for c in data.category] == [r[0] for r in ROWS]
    assert {k: v.tolist() for k, v in data.splits.items()} == {"pretrain": [0, 1, 2, 3], "train": [0, 1], "test": [2],
                                                                "val": [3]}
    # B had 7 audio rows: rows 7..9 repeat row 6. C had 12 video rows: the first 10 are kept.
    original_b = read_zipped_array(layout["audio_dir"] / "BBBBBBBBBBB.zip")
    assert np.array_equal(data.audio[1, :7], original_b)
    assert all(np.array_equal(data.audio[1, t], original_b[6]) for t in (7, 8, 9))
    original_c = read_zipped_array(layout["video_dir"] / "CCCCCCCCCCC.zip")
    assert np.array_equal(data.video[2], original_c[:10])
    assert data.info["segment_fix"] == {"audio": {"ok": 3, "padded": 1, "truncated": 0},
                                        "video": {"ok": 3, "padded": 0, "truncated": 1}}
    reopened = load_dataset(tmp_path / "out")
    assert np.array_equal(reopened.audio, data.audio)


def test_fit_segments():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded, status = fit_segments(x, 5)
    assert status == "padded" and padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    cut, status = fit_segments(np.arange(24).reshape(12, 2), 10)
    assert status == "truncated" and cut.shape == (10, 2) and cut[-1].tolist() == [18, 19]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_unpickler_reads_numpy_arrays_of_any_protocol(protocol):
    array = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    assert np.array_equal(load_array(pickle.dumps(array, protocol=protocol)), array)


def test_safe_unpickler_reads_numpy1_module_names():
    # Arrays pickled under numpy 1.x name numpy.core.multiarray; numpy 2.x names numpy._core.
    array = np.arange(5.0)
    payload = pickle.dumps(array, protocol=2)
    legacy = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    assert np.array_equal(load_array(legacy), array)
    assert load_array(pickle.dumps(np.array(np.float32(2.5)))) == np.float32(2.5)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    with pytest.raises(DataFormatError) as err:
        load_array(payload, source="evil.zip!features.pkl")
    assert "evil.zip!features.pkl" in str(err.value) and "system" in str(err.value)
    assert "refused" in str(err.value)
    assert not marker.exists()
    # Through the import, too: the error names the zip, nothing runs, nothing is written.
    layout = make_layout(tmp_path / "src", ROWS)
    write_zip(layout["video_dir"] / "CCCCCCCCCCC.zip", members=[("features.pkl", payload)])
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as err:
        run_import(layout, out)
    assert str(layout["video_dir"] / "CCCCCCCCCCC.zip") in str(err.value)
    assert not marker.exists()
    assert_nothing_written(tmp_path, out)


def test_other_globals_and_non_arrays_are_refused():
    with pytest.raises(DataFormatError, match="builtins.eval"):
        load_array(b"cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(DataFormatError, match="expected a numpy array, found dict"):
        load_array(pickle.dumps({"a": 1}))
    with pytest.raises(DataFormatError, match="unreadable pickle"):
        load_array(pickle.dumps(np.zeros(3))[:-5])


def test_last_pkl_member_wins(tmp_path):
    first, last = np.zeros((10, 128), np.float32), np.ones((10, 128), np.float32)
    path = tmp_path / "x.zip"
    write_zip(path, members=[("a.pkl", pickle.dumps(first)), ("notes.txt", b"hello"), ("b.pkl", pickle.dumps(last))])
    assert np.array_equal(read_zipped_array(path), last)


def test_corrupt_zip(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS)
    bad = layout["audio_dir"] / "DDDDDDDDDDD.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as err:
        run_import(layout, out)
    message = str(err.value)
    assert str(bad) in message and "'zip'" in message
    assert "expected a zip archive" in message and "unreadable" in message
    assert_nothing_written(tmp_path, out)


def test_zip_without_pkl_member(tmp_path):
    path = tmp_path / "x.zip"
    write_zip(path, members=[("readme.txt", b"no features")])
    with pytest.raises(DataFormatError) as err:
        read_zipped_array(path)
    assert all(s in str(err.value) for s in (str(path), "zip members", ".pkl", "readme.txt"))


def test_wrong_shape(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS)
    write_zip(layout["audio_dir"] / "BBBBBBBBBBB.zip", np.zeros((10, 64), np.float32))
    out = tmp_path / "out"
    with pytest.raises(DataFormatError) as err:
        run_import(layout, out)
    message = str(err.value)
    assert str(layout["audio_dir"] / "BBBBBBBBBBB.zip") in message
    assert "field 'audio'" in message and "expected shape [T, 128]" in message and "found shape [10, 64]" in message
    assert_nothing_written(tmp_path, out)


def test_nan_in_features(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS)
    video = np.zeros((10,) + VIDEO_SHAPE, np.float32)
    video[4, 1, 0, 3] = np.nan
    write_zip(layout["video_dir"] / "AAAAAAAAAAA.zip", video)
    with pytest.raises(DataFormatError) as err:
        run_import(layout, tmp_path / "out")
    message = str(err.value)
    assert "AAAAAAAAAAA.zip" in message and "field 'video'" in message and "finite values" in message
    assert "nan at index [4, 1, 0, 3]" in message


def test_missing_zip_fails_or_is_skipped(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS)
    (layout["video_dir"] / "BBBBBBBBBBB.zip").unlink()
    with pytest.raises(DataFormatError) as err:
        run_import(layout, tmp_path / "out")
    message = str(err.value)
    assert "BBBBBBBBBBB.zip" in message and "video features of BBBBBBBBBBB" in message and "no such file" in message
    assert_nothing_written(tmp_path, tmp_path / "out")
    data = run_import(layout, tmp_path / "out", skip_missing=True)
    assert list(data.clip_ids) == ["AAAAAAAAAAA", "CCCCCCCCCCC", "DDDDDDDDDDD"]
    assert data.info["skipped_missing"] == ["BBBBBBBBBBB"]


def test_bad_csvs(tmp_path):
    layout = make_layout(tmp_path / "src", ROWS)
    layout["prompts_csv"].write_text("label,prompt\ndog barking,a dog\n")
    with pytest.raises(DataFormatError) as err:
        run_import(layout, tmp_path / "out")
    assert all(s in str(err.value) for s in ("prompts.csv", "prompt", "3 classes", "church bell"))
    layout["meta_csv"].write_text("category,video\ndog barking,AAAAAAAAAAA\n")
    with pytest.raises(DataFormatError) as err:
        run_import(layout, tmp_path / "out")
    assert all(s in str(err.value) for s in ("meta.csv", "header", "video_id", "2 columns without", "not shown"))
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_ave_labels(tmp_path):
    # 28 AVE classes -> [10, 29] labels with background last (docs/method.md §2.5).
    classes = [f"class {i:02d}" for i in range(28)]
    rows = [("class 03", "AAAAAAAAAAA", "train"), ("class 27", "BBBBBBBBBBB", "test")]
    layout = make_layout(tmp_path / "src", rows)
    (tmp_path / "cats.txt").write_text("\n".join(classes) + "\n")
    with open(layout["prompts_csv"], "w") as fh:
        fh.write("label,prompt\n" + "".join(f"{c},the sound of {c}\n" for c in classes))
    (tmp_path / "Annotations.txt").write_text(
        "Category&VideoID&Quality&StartTime&EndTime\nclass 03&AAAAAAAAAAA&good&2&6\nclass 27&BBBBBBBBBBB&good&0&10\n")
    data = run_import(layout, tmp_path / "out", categories_file=tmp_path / "cats.txt",
                      ave_annotations=tmp_path / "Annotations.txt")
    labels = data.labels["segment"]
    assert labels.shape == (2, 10, 29) and data.label_classes["segment"][-1] == "background"
    expected = np.zeros((10, 29), np.float32)
    expected[2:6, 3] = 1
    expected[[0, 1, 6, 7, 8, 9], 28] = 1
    assert np.array_equal(labels[0], expected)
    assert labels[1, :, 27].all() and not labels[1, :, 28].any()


def test_avvp_labels_and_cli(tmp_path):
    # 25 AVVP classes -> [10, 26]; rows keyed by the first 11 characters of the filename.
    avvp_classes = [f"avvp{i:02d}" for i in range(25)]
    layout = make_layout(tmp_path / "src", ROWS)
    (tmp_path / "AVVP_Categories.txt").write_text("\n".join(avvp_classes))
    (tmp_path / "audio.csv").write_text(
        "filename\tonset\toffset\tevent_labels\n"
        "AAAAAAAAAAA_30_40\t8,0\t10,8\tavvp03,avvp07\n"  # combined row: two events, aligned lists
        "BBBBBBBBBBB_0_10\t0\t10\tavvp24\n"
        "ZZZZZZZZZZZ_0_10\t0\t10\tavvp01\n")  # a video not in this import: ignored
    (tmp_path / "visual.csv").write_text(
        "filename\tonset\toffset\tevent_labels\nAAAAAAAAAAA_30_40\t3\t5\tavvp03\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "codaar.data", "import-official", str(out), "--no-progress",
               "--meta", str(layout["meta_csv"]), "--audio-dir", str(layout["audio_dir"]),
               "--video-dir", str(layout["video_dir"]), "--prompts", str(layout["prompts_csv"]),
               "--video-shape", "2,2,8", "--text-dim", "32",
               "--avvp-audio", str(tmp_path / "audio.csv"), "--avvp-visual", str(tmp_path / "visual.csv"),
               "--avvp-categories", str(tmp_path / "AVVP_Categories.txt")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = load_dataset(out)
    audio, visual = data.labels["audio"], data.labels["video"]
    assert audio.shape == visual.shape == (4, 10, 26) and data.text_table.shape == (3, 10, 32)
    assert audio[0, 8:, 3].all() and not audio[0, :8, 3].any()
    assert audio[0, :8, 7].all() and not audio[0, 8:, 7].any()
    assert not audio[0, :, 25].any()  # every segment has an event
    assert audio[1, :, 24].all() and audio[2, :, 25].all()  # C has no row: background only
    assert visual[0, 3:5, 3].all() and visual[0, [0, 1, 2, 5, 6, 7, 8, 9], 25].all()
    assert data.splits["avvp_audio"].tolist() == [0, 1] and data.splits["avvp_video"].tolist() == [0]
    # A class outside the AVVP list is an error naming the file, line and value.
    (tmp_path / "visual.csv").write_text("filename\tonset\toffset\tevent_labels\nAAAAAAAAAAA_1\t3\t5\tBlender\n")
    result = subprocess.run(command[:4] + [str(tmp_path / "out2")] + command[5:], capture_output=True, text=True)
    assert result.returncode == 2
    assert all(s in result.stderr for s in ("visual.csv", "line 2 event_labels", "AVVP class list", "'Blender'"))
    assert not (tmp_path / "out2").exists()


def test_paper_video_shape_default(tmp_path):
    # The real shape: two clips of [10, 7, 7, 512] video, one of them 9 s long (padded).
    layout = make_layout(tmp_path / "src", ROWS[:1])
    write_zip(layout["video_dir"] / "AAAAAAAAAAA.zip", np.ones((9, 7, 7, 512), np.float32), protocol=5)
    data = import_official(**layout, out=tmp_path / "out", progress=False)
    assert data.video.shape == (1, 10, 7, 7, 512) and data.info["segment_fix"]["video"]["padded"] == 1
