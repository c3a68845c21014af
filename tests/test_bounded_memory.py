"""Memory stays bounded by the work at hand, not by the size of the input (issue #23, class H):
a long audio file is decoded window by window, and the finite check of a data set reads its memory
maps through a bounded buffer instead of leaving every page of them resident."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from codaar.data import DataFormatError, load_dataset
from codaar.data import container as data_container
from codaar.data.__main__ import main as data_main
from codaar.data.extract.media import DecodeSettings, decode_clip, decoded_in_order
from tests.extract_media import write_clip

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def write_long_wav(path: Path, seconds: int) -> Path:
    """Mono 16 kHz 16-bit PCM: a different tone in each second (written block by block)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        t = np.arange(16000) / 16000
        for second in range(seconds):
            out.writeframes((8000 * np.sin(2 * np.pi * (200 + 37 * (second % 50)) * t)).astype("<i2").tobytes())
    return path


def peak_while_decoding(path: Path, settings: DecodeSettings) -> tuple[int, list[int]]:
    """Peak bytes numpy and Python allocate while the windows of `path` go by one at a time (each
    dropped before the next), and the windows' first seconds."""
    starts = []
    tracemalloc.start()
    try:
        for _, clip in decoded_in_order([(0, str(path), settings)], workers=0):
            for window in getattr(clip, "windows", clip):  # (a clip decoded whole, before streaming)
                starts.append(window.start)
                del window
            del clip
        return tracemalloc.get_traced_memory()[1], starts
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return {seconds: write_long_wav(folder / f"{seconds}s.wav", seconds) for seconds in (60, 300)}


@pytest.mark.parametrize("window", ["every", "centre"])
def test_a_long_audio_file_is_decoded_window_by_window(wavs, window):
    settings = DecodeSettings(segments=10, window=window, video=False)
    (short, _), (long, starts) = (peak_while_decoding(wavs[seconds], settings) for seconds in (60, 300))
    assert starts == (list(range(0, 300, 10)) if window == "every" else [145])
    # The peak is one window's (its samples, the log-mel's spectra: ~10 MiB) whatever the file's length; it
    # was the whole file's (5 minutes: 19 MiB of samples, twice while they were joined; 37 MiB in all).
    assert long < 1.25 * short and long < 19 * MIB, f"{short / MIB:.1f} MiB for 60 s, {long / MIB:.1f} MiB for 300 s"


def test_streamed_windows_equal_whole_decoding_through_decode_workers(tmp_path):
    clip = write_clip(tmp_path / "c25.webm", 25)
    short = write_clip(tmp_path / "b3.mkv", 3)
    settings = DecodeSettings(segments=4, window="every", frames_per_second=2, frame_size=32)
    jobs = [(0, str(clip), settings), (1, str(short), settings), (2, str(tmp_path / "missing.mp4"), settings)]
    whole = {0: decode_clip(clip, settings).windows, 1: decode_clip(short, settings).windows}
    for workers in (0, 2):
        seen = {}
        for index, windows in decoded_in_order(jobs, workers):
            try:
                seen[index] = list(windows)
            except Exception as exc:
                seen[index] = str(exc)
        assert seen[2] == "no such file"
        for index in (0, 1):
            assert [w.start for w in seen[index]] == [w.start for w in whole[index]]
            for a, b in zip(seen[index], whole[index]):
                assert np.array_equal(a.log_mel, b.log_mel) and np.array_equal(a.frames, b.frames)


def test_a_file_found_unusable_after_some_windows_leaves_none_of_its_rows(tmp_path, monkeypatch):
    from codaar.data.extract import media

    first, second = write_clip(tmp_path / "a12.wav", 12), write_clip(tmp_path / "b8.wav", 8)
    fast = ["--random-weights", "--segments", "4", "--window", "every", "--no-progress", "--max-bad-fraction", "0.5"]
    whole = tmp_path / "whole"
    assert data_main(["extract", str(whole), str(second), *fast]) == 0
    windows = media.ClipWindows.__iter__

    def corrupt_after_two(self):  # injected: the decoder fails in the file's middle, after two windows
        for count, window in enumerate(windows(self)):
            if count == 2 and self.path.name == "a12.wav":
                raise media.UnusableMedia("corrupt audio stream after 8.00 s (injected)")
            yield window

    monkeypatch.setattr(media.ClipWindows, "__iter__", corrupt_after_two)
    out = tmp_path / "out"
    assert data_main(["extract", str(out), str(first), str(second), *fast]) == 0
    data, alone = load_dataset(out), load_dataset(whole)
    assert list(data.clip_ids) == ["b8@0s", "b8@4s"]  # a12's two windows were dropped with it
    assert np.array_equal(np.asarray(data.audio), np.asarray(alone.audio))
    report = json.loads((out / "extract_report.json").read_text())
    assert report["skipped"] == [{"file": str(first), "reason": "corrupt audio stream after 8.00 s (injected)"}]


def test_the_finite_check_finds_a_value_in_any_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(data_container, "_FINITE_SCAN_BYTES", 3 * 4 * 5)  # 3 rows of [4, 5] float32 per chunk
    for row, where in ((0, (0, 0)), (4, (1, 3)), (9, (3, 4))):  # first, middle, last chunk (the last one short)
        array = np.zeros((10, 4, 5), np.float32)
        array[(row, *where)] = np.nan if row != 4 else np.inf
        np.save(tmp_path / "a.npy", array)
        mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
        for candidate in (mapped, array):  # read from the file, and in memory
            with pytest.raises(DataFormatError) as err:
                data_container.check_finite(candidate, tmp_path / "a.npy", "audio")
            assert f"at index {[row, *where]}" in str(err.value)
    data_container.check_finite(np.load(tmp_path / "a.npy", mmap_mode="r")[:9], tmp_path / "a.npy", "audio")


def test_the_finite_check_keeps_resident_memory_bounded(tmp_path):
    data = tmp_path / "data"
    assert data_main(["synth", str(data), "--preset", "paper", "--num-pretrain", "64", "--num-train", "4",
                      "--num-val", "2", "--num-test", "2", "--no-progress"]) == 0  # video: 72 MB of float32
    assert (data / "video.npy").stat().st_size > 64 * MIB
    child = textwrap.dedent(f"""
        from codaar.data import container, load_dataset

        def kib(field):
            return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])

        container._FINITE_SCAN_BYTES = 1 << 20
        before = kib("VmRSS:")
        load_dataset({str(data)!r}, check_finite=True)
        print((kib("VmHWM:") - before) * 1024)
        """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    assert grown < 16 * MIB, f"resident memory grew by {grown / MIB:.1f} MiB over a 72 MiB data set"
