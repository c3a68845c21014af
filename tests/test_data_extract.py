"""`python -m codaar.data extract` on media the tests write with PyAV: decoding and the segment,
padding and window rules, the skip report and the bad-file limit, resumption after SIGKILL
(bit for bit), per-clip captions, labels and splits, and training/evaluating on the result.

Random weights throughout; T = 4 segments and 32x32 frames keep VGGish/VGG-19 cheap on a CPU
(the rules do not depend on T or the frame size; the 224 -> 7x7x512 shape is tested in
test_data_extract_models.py)."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codaar.data import load_dataset
from codaar.data.__main__ import main as data_main
from codaar.data.extract.logmel import hertz_to_mel
from codaar.data.extract.media import DecodeSettings, decode_clip
from codaar.data.text import HashedTextFeaturizer
from tests.extract_media import PALETTE, colour_of, tone_of, write_clip, write_truncated

T = 4
FAST = ["--random-weights", "--segments", str(T), "--frame-size", "32", "--no-progress"]
GOOD = ["a10", "b3", "c25", "d6", "e5"]  # sorted by file name, as the extraction orders them
BAD = {"empty": "zero length", "noaudio": "no audio track", "trunc": "unreadable container"}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    folder = root / "videos"
    folder.mkdir()
    write_clip(folder / "a10.mp4", 10)
    write_clip(folder / "b3.mkv", 3)  # shorter than T: padded
    write_clip(folder / "c25.webm", 25)  # longer: the window rule
    write_clip(folder / "d6.avi", 6, stereo=False)
    write_clip(folder / "e5.wav", 5)  # audio only
    write_clip(folder / "noaudio.mp4", 4, audio=False)
    write_truncated(folder / "trunc.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.md").write_text("not media")  # ignored: not a media extension
    return folder


def run_cli(*args):
    return data_main(["extract", *map(str, args)])


def arrays_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.load(p, allow_pickle=False) for p in sorted(folder.rglob("*.npy"))}


@pytest.fixture(scope="module")
def first_run(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "data"
    assert run_cli(out, media, *FAST, "--max-bad-fraction", "0.5") == 0
    return out


# ------------------------------------------------------------------------------------- decoding
def tone_band(freq):
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    return int(np.argmin(np.abs(edges[1:-1] - hertz_to_mel(freq))))


def nearest_colour(rgb):
    return int(np.argmin(((PALETTE.astype(float) - rgb) ** 2).sum(axis=1)))


@pytest.mark.parametrize("window, starts", [("first", [0]), ("centre", [7]), ("every", [0, 10])])
def test_each_segment_holds_its_own_second_of_sound_and_picture(media, window, starts):
    clip = decode_clip(media / "c25.webm", DecodeSettings(segments=10, window=window, frames_per_second=2,
                                                          frame_size=32))
    assert clip.seconds == (10 if window == "first" else 25)  # "first" stops decoding after T seconds
    assert [w.start for w in clip.windows] == starts
    for w in clip.windows:
        assert w.log_mel.shape == (10, 96, 64) and w.frames.shape == (10, 2, 32, 32, 3)
        for k in range(10):
            second = w.start + k
            assert int(w.log_mel[k].mean(axis=0).argmax()) == tone_band(tone_of(second))
            for frame in w.frames[k]:  # both frames of the second show its colour
                assert nearest_colour(frame.reshape(-1, 3).mean(axis=0)) == nearest_colour(colour_of(second))


def test_short_and_audio_only_clips_decode(media):
    short = decode_clip(media / "b3.mkv", DecodeSettings(segments=10, frame_size=32))
    assert short.seconds == 3 and short.windows[0].log_mel.shape[0] == 3 and short.windows[0].frames.shape[0] == 3
    audio_only = decode_clip(media / "e5.wav", DecodeSettings(segments=10, frame_size=32))
    assert audio_only.windows[0].frames is None and audio_only.windows[0].log_mel.shape[0] == 5


# ------------------------------------------------------------------------------------- a folder
def test_a_folder_becomes_a_data_set(first_run):
    data = load_dataset(first_run)
    assert list(data.clip_ids) == GOOD
    assert data.audio.shape == (5, T, 128) and data.video.shape == (5, T, 1, 1, 512)
    assert data.modalities == ("audio", "video") and list(data.splits) == ["pretrain"] and not data.labels
    audio, video = np.asarray(data.audio), np.asarray(data.video)
    # the 3 s clip repeats its last second; its real seconds differ
    b3 = GOOD.index("b3")
    assert np.array_equal(audio[b3, 3], audio[b3, 2]) and np.array_equal(video[b3, 3], video[b3, 2])
    assert not np.allclose(audio[b3, 0], audio[b3, 1]) and not np.allclose(video[b3, 0], video[b3, 1])
    # the audio-only file has zero video features; the others do not
    assert not video[GOOD.index("e5")].any() and video[GOOD.index("a10")].any()
    info = data.info
    assert info["random_weights"] is True and "RANDOM WEIGHTS" in info["warning"]
    assert info["models"]["audio"]["model"] == "vggish" and info["models"]["video"]["layer"] == "pool5"
    assert info["models"]["video"]["weights"] == {"source": "random", "seed": 0}
    assert info["audio"]["sample_rate"] == 16000 and "centre" in info["video"]["frame_policy"]
    assert info["segment_fix"] == {"ok": 4, "padded": 1} and info["clips_without_video"] == 1
    assert info["codaar_version"]


def test_inspect_shows_the_random_weights_warning(first_run, capsys):
    assert data_main(["inspect", str(first_run)]) == 0
    out = capsys.readouterr().out
    assert "source: extract" in out and "warning: RANDOM WEIGHTS" in out


def test_skipped_files_are_reported_with_their_reason(first_run, media):
    report = json.loads((first_run / "extract_report.json").read_text())
    assert (report["inputs"], report["extracted"], report["clips"]) == (8, 5, 5)
    assert report["without_video"] == [str(media / "e5.wav")]  # kept, with zero video features
    reasons = {Path(s["file"]).stem: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(BAD)
    for stem, reason in BAD.items():
        assert reasons[stem].startswith(reason)


def test_stored_features_are_the_models_output_on_the_decoded_clip(first_run, media):
    from codaar.data.extract.features import FeatureModels, ModelSettings
    from codaar.data.official_import import fit_segments

    models = FeatureModels(ModelSettings(random_weights=True, frame_size=32))
    window = decode_clip(media / "d6.avi", DecodeSettings(segments=T, frame_size=32)).windows[0]
    data = load_dataset(first_run)
    row = GOOD.index("d6")
    assert np.array_equal(data.audio[row], fit_segments(models.audio(window.log_mel), T)[0])
    assert np.array_equal(data.video[row], fit_segments(models.video(window.frames, T), T)[0])


def test_window_policies(first_run, media, tmp_path):
    every, centre = tmp_path / "every", tmp_path / "centre"
    assert run_cli(every, media / "a10.mp4", *FAST, "--window", "every") == 0
    assert run_cli(centre, media / "a10.mp4", *FAST, "--window", "centre") == 0
    e, c, first = load_dataset(every), load_dataset(centre), load_dataset(first_run)
    assert list(e.clip_ids) == ["a10@0s", "a10@4s"]  # 10 s: two full windows of 4 s, the 2 s tail dropped
    assert list(c.clip_ids) == ["a10"]
    # the first window of "every" is the "first" policy's clip; "centre" starts at (10 - 4) // 2 = 3 s
    assert np.array_equal(e.audio[0], first.audio[GOOD.index("a10")])
    assert np.array_equal(e.video[0], first.video[GOOD.index("a10")])
    for modality in ("audio", "video"):
        cx, ex = np.asarray(c.modality(modality)), np.asarray(e.modality(modality))
        assert np.allclose(cx[0, 0], ex[0, 3], atol=1e-5) and np.allclose(cx[0, 1:], ex[1, :3], atol=1e-5)


def test_float16_audio_only_run_with_the_released_embedding_format(media, tmp_path):
    out = tmp_path / "data"
    assert run_cli(out, media / "b3.mkv", *FAST, "--dtype", "float16", "--no-video", "--video-pooling", "mean",
                   "--vggish-postprocess", "pca-quantize") == 0
    data = load_dataset(out)
    assert data.audio.dtype == np.float16 and data.video.dtype == np.float16 and data.video.shape == (1, T, 512)
    audio = np.asarray(data.audio, dtype=np.float64)
    assert not np.asarray(data.video).any()  # no VGG-19 was run
    assert (audio == np.round(audio)).all() and audio.min() >= 0 and audio.max() <= 255 and audio.std() > 0
    models = data.info["models"]
    assert "quantised to 0..255" in models["audio"]["postprocess"]
    assert models["audio"]["pca_weights"]["source"] == "random"
    assert "video" not in models and data.info["video"]["frame_policy"].startswith("none")


# ------------------------------------------------------------------------------------- bad files
def test_too_many_bad_files_fail_with_the_report_and_a_rerun_resumes(media, tmp_path, capsys):
    out = tmp_path / "data"
    inputs = [media / "empty.mp4", media / "b3.mkv", media / "noaudio.mp4"]
    assert run_cli(out, *inputs, *FAST) == 2  # default --max-bad-fraction 0.1: the first bad file stops the run
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 of 3 files are unusable" in err and "empty.mp4: zero length" in err
    work = tmp_path / ".data.extract"
    assert not out.exists() and (work / "extract_report.json").is_file()
    # other settings do not silently reuse the unfinished run
    assert run_cli(out, *inputs, *FAST, "--segments", "5", "--max-bad-fraction", "0.7") == 2
    assert "--restart" in capsys.readouterr().err
    assert run_cli(out, *inputs, *FAST, "--max-bad-fraction", "0.7") == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["this_run"]["files"] == 2  # the empty file was not looked at again
    assert [Path(s["file"]).name for s in report["skipped"]] == ["empty.mp4", "noaudio.mp4"]
    assert not work.exists()


def test_user_errors_are_one_line(media, tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    (tmp_path / "dup").mkdir()
    write_clip(tmp_path / "dup" / "b3.wav", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("clip_id,class,start,end\nb3,dog,4,2\n")
    b3 = media / "b3.mkv"
    cases = [  # (positional arguments, options, message)
        ([existing, b3], [], "already exists"),
        ([tmp_path / "o1", tmp_path / "missing"], [], "no such file or folder"),
        ([tmp_path / "o2", b3, tmp_path / "dup"], [], "two input files have the clip id 'b3'"),
        ([tmp_path / "o3", b3], ["--labels", labels], "end > start"),
        ([tmp_path / "o4", b3], ["--frame-size", "100"], "multiple of 32"),
        ([tmp_path / "o5", existing], [], "no media files"),
    ]
    if not torch.cuda.is_available():
        cases.append(([tmp_path / "o6", b3], ["--device", "cuda"], "--device cuda: this torch sees no CUDA device"))
    for positional, options, message in cases:
        assert run_cli(*positional, *FAST, *options) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0 and "Traceback" not in err
    # a bad setting is refused where it is declared (ExtractSettings), naming it, before anything runs
    for options, message in ((["--splits", "0.5,0.6,0.1"], "setting 'splits': expected three fractions "
                              "train,val,test summing to 1"),
                             (["--max-bad-fraction", "1.5"], "setting 'max_bad_fraction': expected a finite number "
                              ">= 0 and <= 1, found 1.5"),
                             (["--workers", "-1"], "setting 'workers'")):
        assert run_cli(tmp_path / "o7", media / "b3.mkv", *FAST, *options) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "o7").exists() and not (tmp_path / ".o7.extract").exists()


# ------------------------------------------------------------------------------------- resumption
def live_children(pid: int) -> set[int]:
    """Processes (not zombies) whose parent is ``pid``, from /proc (Linux)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(parent) == pid and state != "Z":
            children.add(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_extraction_resumes_to_the_same_bytes(first_run, media, tmp_path):
    out = tmp_path / "data"
    journal = tmp_path / ".data.extract" / "journal.jsonl"
    command = [sys.executable, "-m", "codaar.data", "extract", str(out), str(media), *FAST,
               "--max-bad-fraction", "0.5", "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 2:
            workers = live_children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not out.exists() and journal.exists()
    assert len(workers) >= 2  # the decode workers (and multiprocessing's resource tracker) ...
    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, workers))  # ... do not outlive the killed extraction
    assert run_cli(out, media, *FAST, "--max-bad-fraction", "0.5") == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["this_run"]["files"] < 8  # it continued, it did not start over
    resumed, reference = arrays_of(out), arrays_of(first_run)
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(resumed[name], reference[name]), name
    assert (out / "manifest.json").read_text() == (first_run / "manifest.json").read_text()


# ------------------------------------------------------------------------------------- captions
def test_per_clip_captions_follow_the_contract(media, tmp_path):
    captions = tmp_path / "captions.csv"
    captions.write_text('clip_id,caption\nb3,"a church bell rings, then a dog barks loudly"\ne5,a tone\n'
                        "b3,the second caption of b3\n")
    inputs = [media / "b3.mkv", media / "e5.wav", media / "d6.avi"]  # d6 has no caption: skipped, reported
    first, each = tmp_path / "first", tmp_path / "each"
    assert run_cli(first, *inputs, *FAST, "--captions", captions, "--text-dim", "32", "--max-bad-fraction", "0.4") == 0
    assert run_cli(each, *inputs, *FAST, "--captions", captions, "--text-dim", "32", "--max-bad-fraction", "0.4",
                   "--caption-policy", "each") == 0
    featurizer = HashedTextFeaturizer(dim=32, max_tokens=T, seed=0)
    expected = {"first": [("b3", "a church bell rings, then a dog barks loudly"), ("e5", "a tone")],
                "each": [("b3#0", "a church bell rings, then a dog barks loudly"), ("b3#1", "the second caption of b3"),
                         ("e5#0", "a tone")]}
    for name, folder in (("first", first), ("each", each)):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["schema_version"] == 2 and manifest["text_kind"] == "per-clip"
        assert "text" in manifest["modalities"]
        assert "text" not in manifest["arrays"]  # per-clip text, not class prompts
        n = len(expected[name])
        assert manifest["arrays"]["text_clips"] == {"file": "text_clips.npy", "shape": [n, T, 32], "dtype": "float32"}
        assert manifest["arrays"]["text_mask"] == {"file": "text_mask.npy", "shape": [n, T], "dtype": "bool"}
        tokens = np.load(folder / "text_clips.npy", allow_pickle=False)
        mask = np.load(folder / "text_mask.npy", allow_pickle=False)
        assert list(np.load(folder / "clip_ids.npy")) == [c for c, _ in expected[name]]
        assert json.loads((folder / "captions.json").read_text()) == [c for _, c in expected[name]]
        for row, (_, caption) in enumerate(expected[name]):
            assert np.array_equal(tokens[row], featurizer(caption))
            assert mask[row].tolist() == [i < len(featurizer.tokenize(caption)) for i in range(T)]
        report = json.loads((folder / "extract_report.json").read_text())
        assert report["skipped"] == [{"file": str(media / "d6.avi"), "reason": "no caption in captions.csv"}]
    # "each" repeats the clip's audio/video for every caption
    audio = np.load(each / "audio.npy")
    assert np.array_equal(audio[0], audio[1]) and np.array_equal(audio[0], np.load(first / "audio.npy")[0])


# ------------------------------------------------------------------------------------- train / evaluate
def test_labelled_extraction_trains_and_evaluates(media, tmp_path, capsys):
    from codaar.evaluate.__main__ import main as evaluate_main
    from codaar.train import main as train_main

    labels = tmp_path / "labels.csv"
    labels.write_text("clip_id,class,start,end\na10,dog,1,3\nb3,bell,,\nc25,dog,,\nd6,bell,,\ne5,dog,,\n"
                      "noaudio,bell,,\n")
    data_dir = tmp_path / "data"
    assert run_cli(data_dir, media, *FAST, "--labels", labels, "--video-pooling", "mean",
                   "--max-bad-fraction", "0.5") == 0
    data = load_dataset(data_dir)
    assert data.class_names == ["bell", "dog"] and data.text_table.shape == (2, T, 768)
    assert data.video.shape[2:] == (512,) and list(data.clip_ids) == GOOD
    segment = np.asarray(data.labels["segment"])
    assert segment[0].tolist() == [[0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 1]]  # a10: dog on seconds 1-2 only
    assert segment[1].tolist() == [[1, 0, 0]] * T  # b3: bell throughout
    assert data.category.tolist() == [1, 0, 1, 0, 1]
    splits = {name: sorted(data.splits[name].tolist()) for name in ("train", "val", "test")}
    assert sorted(map(len, splits.values())) == [1, 1, 3] and sorted(sum(splits.values(), [])) == list(range(5))
    run = tmp_path / "run"
    tiny = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
            "--batch-size", "2", "--max-steps", "2", "--no-progress"]
    train_main(["--data", str(data_dir), "--out", str(run), *tiny])
    result = evaluate_main([str(run), "--data", str(data_dir), "--ave-epochs", "1", "--avvp-epochs", "1",
                            "--no-plots", "--threads", "1"])
    assert set(result["clean"]) >= {"ave", "avvp"} and "retrieval" in result
    # without labels: pretraining works, evaluation says what is missing
    unlabelled, run2 = tmp_path / "unlabelled", tmp_path / "run2"
    assert run_cli(unlabelled, media / "b3.mkv", media / "e5.wav", *FAST, "--video-pooling", "mean") == 0
    train_main(["--data", str(unlabelled), "--out", str(run2), "--modalities", "video,audio", *tiny])
    with pytest.raises(SystemExit) as exited:
        evaluate_main([str(run2), "--data", str(unlabelled), "--no-plots", "--threads", "1"])
    assert exited.value.code == 2
    assert re.search("splits.train.*non-empty 'train' split, found \\['pretrain'\\]", capsys.readouterr().err)


def test_importing_the_data_package_stays_light():
    code = ("import sys, codaar.data, codaar.data.extract, codaar.data.extract.cli, codaar.data.__main__; "
            "print(sorted(m for m in ('av', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
