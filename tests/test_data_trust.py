"""The data a run was trained on is the data it is resumed, evaluated and encoded on: the absolute
path and a sampled fingerprint are recorded, a change is refused naming the folder and the array,
other data asked for with --data is stated in the outputs; splits that share clips or list one twice
are reported and refused; a resumed extraction recomputes an input rewritten in place."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from codaar.data import build_synthetic, load_dataset, synthetic_config, write_dataset
from codaar.data.__main__ import main as data_main
from codaar.data.fingerprint import BLOCK, BLOCKS, data_fingerprint, differences, file_fingerprint
from codaar.data.splits import split_problems
from codaar.encode.__main__ import main as encode_main
from codaar.evaluate.__main__ import main as evaluate_main
from codaar.train import main as train_main

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--batch-size", "20", "--no-progress"]
SIZES = dict(num_pretrain=40, num_train=20, num_val=10, num_test=10)
EVAL = ["--tasks", "retrieval", "--no-plots"]


def small_data(seed: int = 0):
    return build_synthetic(synthetic_config("default", seed=seed, **SIZES))


def edit_in_place(path, keep_mtime: bool = True) -> None:
    """Change one value of an .npy file in place: same shape, same size, (by default) the same mtime."""
    stat = os.stat(path)
    array = np.load(path, mmap_mode="r+")
    array.reshape(-1)[array.size // 2] += 1
    array.flush()
    del array
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def exit_code(call, argv) -> int:
    with pytest.raises(SystemExit) as stop:
        call(argv)
    return stop.value.code


def one_line(err: str, *parts: str) -> None:
    err = err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


# ----------------------------------------------------------------------------------- fingerprints
def test_a_file_fingerprint_sees_a_rewrite_in_place(tmp_path):
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(bytes(1000))
    large.write_bytes(bytes(BLOCK * BLOCKS * 3 + 17))  # sampled, not hashed whole
    for path in (small, large):
        before = file_fingerprint(path)
        stat = os.stat(path)
        for offset in (0, path.stat().st_size - 1):  # the header and the end are always sampled
            with open(path, "r+b") as fh:
                fh.seek(offset)
                fh.write(b"\x01")
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the mtime put back
            after = file_fingerprint(path)
            assert after["size"] == before["size"] and after["mtime_ns"] == before["mtime_ns"]
            assert after["sampled_sha256"] != before["sampled_sha256"], (path.name, offset)
            with open(path, "r+b") as fh:
                fh.seek(offset)
                fh.write(b"\x00")
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert file_fingerprint(path) == before
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: seen too
        assert file_fingerprint(path)["mtime_ns"] != before["mtime_ns"]


def test_a_folder_fingerprint_names_what_changed(tmp_path):
    root = write_dataset(small_data(), tmp_path / "d")
    before = data_fingerprint(load_dataset(root))
    assert before["path"] == str(root.resolve()) and "audio.npy" in before["files"]
    assert differences(before, data_fingerprint(load_dataset(root))) == []
    edit_in_place(root / "video.npy")
    found = differences(before, data_fingerprint(load_dataset(root)))
    assert found == ["video.npy: content changed (sampled blocks differ)"]
    np.save(root / "splits" / "test.npy", np.load(root / "splits" / "test.npy")[::-1].copy())
    found = differences(before, data_fingerprint(load_dataset(root)))
    assert any(f.startswith("splits/test.npy:") and "modified" in f for f in found), found


def test_the_built_in_data_sets_fingerprint_is_its_generator():
    a, b = data_fingerprint(small_data()), data_fingerprint(small_data())
    assert a["kind"] == "built-in" and differences(a, b) == []
    found = differences(a, data_fingerprint(small_data(seed=1)))
    assert "generator setting seed: 0 -> 1" in found and any(f.startswith("array audio:") for f in found)
    other = replace(small_data(), audio=np.asarray(small_data().audio) + 1)  # same settings, other arrays
    assert differences(a, data_fingerprint(other)) == ["array audio: content changed (sampled blocks differ)"]


# ----------------------------------------------------------------------------------------- splits
def test_split_problems():
    assert split_problems({"pretrain": np.arange(10), "train": np.arange(4), "test": np.arange(4, 10)}) == []
    found = split_problems({"train": np.array([0, 1, 1, 2]), "val": np.array([5]), "test": np.array([2, 3, 5])})
    assert found == ["split 'train' lists 1 clip(s) more than once (e.g. clip 1, 2 times)",
                     "splits 'train' and 'test' share 1 clip(s) (e.g. clip 2)",
                     "splits 'val' and 'test' share 1 clip(s) (e.g. clip 5)"]


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    data = small_data()
    splits = dict(data.splits, test=np.concatenate([data.splits["test"], data.splits["train"][:3]]),
                  pretrain=np.concatenate([data.splits["pretrain"], data.splits["pretrain"][:1]]))
    return write_dataset(replace(data, splits=splits), tmp_path_factory.mktemp("overlap") / "d")


def test_inspect_reports_split_problems(overlapping, tmp_path, capsys):
    assert data_main(["inspect", str(overlapping)]) == 0
    out = capsys.readouterr().out
    assert "split problem: split 'pretrain' lists 1 clip(s) more than once" in out
    assert "split problem: splits 'train' and 'test' share 3 clip(s)" in out
    clean = write_dataset(small_data(), tmp_path / "clean")
    assert data_main(["inspect", str(clean)]) == 0
    out = capsys.readouterr().out
    assert "split problem" not in out and "splits: no clip listed twice, train/val/test disjoint" in out


def test_train_and_evaluate_refuse_split_problems_unless_allowed(overlapping, tmp_path, capsys):
    run = tmp_path / "run"
    assert exit_code(train_main, ["--data", str(overlapping), "--out", str(run), "--max-steps", "1", *TINY]) == 2
    one_line(capsys.readouterr().err, str(overlapping), "splits 'train' and 'test' share 3 clip(s)",
             "--allow-split-problems")
    assert not (run / "checkpoints").exists()
    train_main(["--data", str(overlapping), "--out", str(run), "--max-steps", "1", "--allow-split-problems", *TINY])
    capsys.readouterr()
    assert exit_code(evaluate_main, [str(run), *EVAL, "--out", str(tmp_path / "e1")]) == 2
    one_line(capsys.readouterr().err, "split 'pretrain' lists 1 clip(s) more than once", "--allow-split-problems")
    evaluate_main([str(run), *EVAL, "--out", str(tmp_path / "e2"), "--allow-split-problems"])
    assert (tmp_path / "e2" / "tables.md").is_file()


# ------------------------------------------------------------------ the recorded data of a run
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on `--data d` typed relative to its working directory."""
    root = tmp_path_factory.mktemp("folderrun")
    write_dataset(small_data(), root / "d")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_main(["--data", "d", "--out", "run", "--max-steps", "2", "--checkpoint-every", "1", *TINY])
    finally:
        os.chdir(cwd)
    return root


def test_a_relative_data_path_is_recorded_absolute(folder_run, tmp_path, capsys, monkeypatch):
    meta = json.loads((folder_run / "run" / "checkpoints" / "step-0000002" / "meta.json").read_text())
    assert meta["config"]["data"] == str(folder_run / "d")
    assert meta["data_fingerprint"]["path"] == str(folder_run / "d")
    # from another directory holding another data set of the same name and shapes
    write_dataset(small_data(seed=7), tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    manifest = encode_main([str(folder_run / "run"), "--out", "codes", "--no-progress"])
    assert manifest["data"]["folder"] == str(folder_run / "d")
    assert manifest["pretraining_data"]["same_as_pretraining"] is True
    capsys.readouterr()
    result = evaluate_main([str(folder_run / "run"), *EVAL, "--out", "eval"])
    assert result["data"]["data"] == str(folder_run / "d") and result["data"]["same_as_pretraining"] is True
    assert "NOT THE PRETRAINING DATA" not in (tmp_path / "eval" / "tables.md").read_text()


class changed_in_place:
    """Edit an array of a data set in place (same shape, size and mtime) and put it back afterwards."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.saved, self.stat = self.path.read_bytes(), os.stat(self.path)
        edit_in_place(self.path)

    def __exit__(self, *exc):
        self.path.write_bytes(self.saved)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


def test_resume_refuses_data_changed_in_place(folder_run, tmp_path, capsys):
    shutil.copytree(folder_run / "run", tmp_path / "run")  # a copy of the run, on the run's own data
    data = folder_run / "d"
    resume = ["--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "3", "--resume", *TINY]
    with changed_in_place(data / "audio.npy"):
        assert exit_code(train_main, resume) == 2
        one_line(capsys.readouterr().err, f"data {data}", "audio.npy: content changed", "--resume")
    assert not (tmp_path / "run" / "checkpoints" / "step-0000003").exists()
    train_main(resume)  # the data put back: it resumes
    assert (tmp_path / "run" / "checkpoints" / "step-0000003").is_dir()


def test_evaluate_and_encode_refuse_changed_data(folder_run, tmp_path, capsys):
    run, data = folder_run / "run", folder_run / "d"
    with changed_in_place(data / "text.npy"):
        assert exit_code(encode_main, [str(run), "--out", str(tmp_path / "c1"), "--no-progress"]) == 2
        one_line(capsys.readouterr().err, f"data {data}", "text.npy: content changed", "--data")
        assert exit_code(evaluate_main, [str(run), *EVAL, "--out", str(tmp_path / "e1")]) == 2
        one_line(capsys.readouterr().err, f"data {data}", "text.npy: content changed")
        assert not (tmp_path / "c1").exists() and not (tmp_path / "e1").exists()
        # asked for with --data, the changed data is used, and the outputs say how it differs
        manifest = encode_main([str(run), "--out", str(tmp_path / "c2"), "--data", str(data), "--no-progress"])
        assert manifest["pretraining_data"]["same_as_pretraining"] is False
        assert manifest["pretraining_data"]["differences"] == ["text.npy: content changed (sampled blocks differ)"]
        assert "NOT THE PRETRAINING DATA" in capsys.readouterr().out
        evaluate_main([str(run), *EVAL, "--out", str(tmp_path / "e2"), "--data", str(data)])
        tables = (tmp_path / "e2" / "tables.md").read_text()
        assert "NOT THE PRETRAINING DATA" in tables and "text.npy: content changed" in tables


def test_other_data_is_stated_in_the_manifest_and_the_tables(folder_run, tmp_path, capsys):
    other = write_dataset(small_data(seed=3), tmp_path / "other")
    manifest = encode_main([str(folder_run / "run"), "--out", str(tmp_path / "codes"), "--data", str(other),
                            "--no-progress"])
    provenance = json.loads((tmp_path / "codes" / "manifest.json").read_text())["pretraining_data"]
    assert provenance == manifest["pretraining_data"] and provenance["same_as_pretraining"] is False
    assert provenance["data"] == str(other) and provenance["pretraining_data"] == str(folder_run / "d")
    assert f"folder {folder_run / 'd'} -> {other}" in provenance["differences"]
    capsys.readouterr()
    result = evaluate_main([str(folder_run / "run"), *EVAL, "--out", str(tmp_path / "eval"), "--data", str(other)])
    assert result["data"]["same_as_pretraining"] is False
    assert json.loads((tmp_path / "eval" / "tables.json").read_text())["data"]["data"] == str(other)
    tables = (tmp_path / "eval" / "tables.md").read_text()
    assert f"NOT THE PRETRAINING DATA: scored on {other}; the model was pretrained on {folder_run / 'd'}" in tables


def test_the_built_in_data_set_is_checked_by_its_generator(tmp_path, capsys):
    run = tmp_path / "run"
    train_main(["--out", str(run), "--pretrain-clips", "40", "--max-steps", "1", *TINY])
    meta = json.loads((run / "checkpoints" / "step-0000001" / "meta.json").read_text())
    assert meta["data_fingerprint"]["kind"] == "built-in"
    assert meta["data_fingerprint"]["generator"]["config"]["num_pretrain"] == 40
    capsys.readouterr()
    result = evaluate_main([str(run), *EVAL, "--out", str(tmp_path / "e1")])
    assert result["data"]["same_as_pretraining"] is True
    result = evaluate_main([str(run), *EVAL, "--out", str(tmp_path / "e2"), "--data-seed", "1"])
    assert result["data"]["same_as_pretraining"] is False
    tables = (tmp_path / "e2" / "tables.md").read_text()
    assert "NOT THE PRETRAINING DATA" in tables and "generator setting seed: 0 -> 1" in tables


# ------------------------------------------------------------------------------------ extraction
FAST = ["--random-weights", "--segments", "4", "--frame-size", "32", "--no-progress"]


def reverse_in_place(wav, keep_mtime: bool) -> None:
    """Rewrite a PCM .wav in place with its samples reversed: the same size, other content."""
    stat, raw = os.stat(wav), bytearray(wav.read_bytes())
    start = raw.find(b"data") + 8
    raw[start:] = np.frombuffer(bytes(raw[start:]), np.int16)[::-1].tobytes()
    with open(wav, "r+b") as fh:
        fh.write(raw)
    if keep_mtime:
        os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(wav).st_size == stat.st_size


def npy_arrays(folder) -> dict:
    return {p.relative_to(folder).as_posix(): np.load(p, allow_pickle=False) for p in sorted(folder.rglob("*.npy"))}


@pytest.mark.parametrize("keep_mtime, workers", [(True, "0"), (False, "1")])
def test_a_resumed_extraction_recomputes_an_input_rewritten_in_place(tmp_path, capsys, keep_mtime, workers):
    from tests.extract_media import write_clip

    media = tmp_path / "media"
    media.mkdir()
    write_clip(media / "a.wav", 4)
    (media / "b.mp4").write_bytes(b"")  # unusable: the run stops here, with a.wav journalled
    write_clip(media / "c.wav", 3)
    out = tmp_path / "data"
    assert data_main(["extract", str(out), str(media), *FAST, "--workers", workers]) == 2
    assert (tmp_path / ".data.extract" / "journal.jsonl").read_text().count("\n") == 2
    capsys.readouterr()
    reverse_in_place(media / "a.wav", keep_mtime)
    assert data_main(["extract", str(out), str(media), *FAST, "--max-bad-fraction", "0.5"]) == 0
    assert f"{media / 'a.wav'} changed since it was extracted" in capsys.readouterr().err
    report = json.loads((out / "extract_report.json").read_text())
    assert report["this_run"]["files"] == 3 and report["recomputed"]["files"] == 2
    fresh = tmp_path / "fresh"
    assert data_main(["extract", str(fresh), str(media), *FAST, "--max-bad-fraction", "0.5"]) == 0
    resumed, reference = npy_arrays(out), npy_arrays(fresh)
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name


def test_a_resumed_extraction_keeps_the_work_of_unchanged_inputs(tmp_path, capsys):
    from tests.extract_media import write_clip

    media = tmp_path / "media"
    media.mkdir()
    write_clip(media / "a.wav", 2)
    (media / "b.mp4").write_bytes(b"")
    out = tmp_path / "data"
    assert data_main(["extract", str(out), str(media), *FAST]) == 2
    assert data_main(["extract", str(out), str(media), *FAST, "--max-bad-fraction", "0.5"]) == 0
    assert "changed since it was extracted" not in capsys.readouterr().err
    report = json.loads((out / "extract_report.json").read_text())
    assert "recomputed" not in report and "this_run" not in report  # nothing was left to do


def test_a_relative_path_of_an_older_run_is_refused_not_resolved_here(folder_run, monkeypatch):
    from codaar.pretrained import PretrainedDataError, load_eval_data, load_pretrained

    pretrained = load_pretrained(folder_run / "run")
    pretrained.meta["config"]["data"] = "d"  # as a codaar before absolute paths recorded it
    monkeypatch.chdir(folder_run)  # where a folder "d" exists: the old code loaded it silently
    with pytest.raises(PretrainedDataError, match="field 'config.data': expected an absolute path, found 'd'"):
        load_eval_data(pretrained)
    assert load_eval_data(pretrained, data_dir="d").root.name == "d"  # asked for: used
