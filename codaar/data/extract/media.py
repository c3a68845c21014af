"""Decoding one media file into the models' inputs, and the segment/window policy.

PyAV (FFmpeg, bundled in its wheels) decodes, in this process or in a pool of decode worker
processes (`decoded_in_order`). Nothing here runs a model or imports torch.

* Audio: every channel resampled to 16 kHz by FFmpeg's swresample, then averaged to mono (as
  VGGish's reference input code averages channels), float32 in [-1, 1]. The audio fixes the clip's
  length: whole seconds from its first sample; a trailing part shorter than a second is dropped.
* Segments: a window of T one-second segments; segment k of a window starting at second s covers
  [s + k, s + k + 1). Window policies for clips longer than T: ``first`` (seconds [0, T)),
  ``centre`` (starting at (n - T) // 2), ``every`` (each full window [wT, (w+1)T) becomes its own
  clip; a tail shorter than T is dropped). A clip shorter than T gives one window of its n < T
  seconds; the caller pads it to T by repeating the last second (the authors' convention).
* Video: per segment, the decoded frame nearest to each of K instants spread evenly inside the
  second (K = 1: the centre, s + k + 0.5 s), converted to RGB and resized to S x S by swscale
  (bilinear; the whole frame, no crop). A video shorter than the audio repeats its last frame.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .logmel import SAMPLE_RATE, examples_per_second

WINDOW_POLICIES = ("first", "centre", "every")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".wma")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


class UnusableMedia(Exception):
    """A file that cannot give a clip; the message is the reason shown in the skip report."""


@dataclass(frozen=True)
class DecodeSettings:
    segments: int = 10  # T
    window: str = "first"
    frames_per_second: int = 1  # K frames per segment (their pool5 maps are averaged)
    frame_size: int = 224  # S: frames are resized to S x S
    video: bool = True  # False: audio-only run, frames are not decoded


@dataclass
class Window:
    start: int  # first second of the window
    log_mel: np.ndarray  # [n, 96, 64] float32, n <= T real segments
    frames: np.ndarray | None  # [n, K, S, S, 3] uint8; None when the file has no video stream


@dataclass
class DecodedClip:
    seconds: int  # whole seconds of audio decoded (the "first" policy stops after T)
    windows: list[Window]


def window_starts(seconds: int, segments: int, policy: str) -> list[int]:
    """First second of each window taken from a clip of ``seconds`` whole seconds."""
    if policy not in WINDOW_POLICIES:
        raise ValueError(f"window policy: expected one of {WINDOW_POLICIES}, got {policy!r}")
    if seconds <= segments or policy == "first":
        return [0]
    if policy == "centre":
        return [(seconds - segments) // 2]
    return list(range(0, seconds - segments + 1, segments))


def segment_instants(start: int, count: int, frames_per_second: int) -> np.ndarray:
    """[count, K] times (seconds from the first audio sample) of the frames each segment uses."""
    offsets = (np.arange(frames_per_second) + 0.5) / frames_per_second
    return start + np.arange(count)[:, None] + offsets[None, :]


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _open(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except Exception as exc:  # FFmpeg reports a bad container through many error types
        raise UnusableMedia(f"unreadable container ({_describe(exc)})") from None


def decode_audio(path: Path, max_seconds: int | None = None) -> tuple[np.ndarray, float]:
    """Mono 16 kHz float32 samples of the first audio stream (at most ``max_seconds`` of them when
    given), and the stream time (s) of the first sample."""
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise UnusableMedia("no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # keeps the channels; averaged below
        chunks, collected, first_time = [], 0, None
        limit = None if max_seconds is None else max_seconds * SAMPLE_RATE
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = frame.time or 0.0
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().mean(axis=0, dtype=np.float64).astype(np.float32)
                    chunks.append(chunk)
                    collected += chunk.size
                if limit is not None and collected >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float64).astype(np.float32))
        except Exception as exc:
            raise UnusableMedia(f"corrupt audio stream after {collected / SAMPLE_RATE:.2f} s "
                                f"({_describe(exc)})") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if limit is not None:
        samples = samples[:limit]
    return samples, float(first_time or 0.0)


def decode_frames(path: Path, instants: np.ndarray, size: int) -> np.ndarray | None:
    """RGB frames [*instants.shape, S, S, 3] uint8 nearest to the given stream times (sorted
    ascending when flattened); None when the file has no video stream."""
    flat = instants.reshape(-1)
    with _open(path) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        picks: list[np.ndarray | None] = [None] * flat.size
        pending = 0
        previous = None  # (time, frame, its RGB array once converted)

        def rgb(entry):
            if entry[2] is None:
                entry[2] = entry[1].to_ndarray(format="rgb24", width=size, height=size, interpolation="BILINEAR")
            return entry[2]

        try:
            for index, frame in enumerate(container.decode(stream)):
                when = frame.time
                if when is None:
                    if not rate:
                        raise UnusableMedia("video frames without timestamps or frame rate")
                    when = index / float(rate)
                current = [when, frame, None]
                while pending < flat.size and when >= flat[pending]:
                    # the nearer of the frames just before and at/after the instant (ties: the earlier)
                    nearer = previous if previous is not None and flat[pending] - previous[0] <= when - flat[pending] \
                        else current
                    picks[pending] = rgb(nearer)
                    pending += 1
                if pending == flat.size:
                    break
                previous = current
        except UnusableMedia:
            raise
        except Exception as exc:
            raise UnusableMedia(f"corrupt video stream ({_describe(exc)})") from None
        if previous is None and pending == 0:
            raise UnusableMedia("video track without decodable frames")
        while pending < flat.size:  # the video ends before the audio: hold its last frame
            picks[pending] = rgb(previous)
            pending += 1
    return np.stack(picks).reshape(instants.shape + (size, size, 3))


def decode_clip(path, settings: DecodeSettings) -> DecodedClip:
    """Everything the feature models need from one file; raises `UnusableMedia` with the reason
    when the file cannot give a clip."""
    path = Path(path)
    if not path.is_file():
        raise UnusableMedia("no such file")
    if path.stat().st_size == 0:
        raise UnusableMedia("zero length (empty file)")
    t = settings.segments
    samples, audio_start = decode_audio(path, max_seconds=t if settings.window == "first" else None)
    if samples.size == 0:
        raise UnusableMedia("zero length (no audio samples decoded)")
    seconds = samples.size // SAMPLE_RATE
    if seconds == 0:
        raise UnusableMedia(f"shorter than one second ({samples.size / SAMPLE_RATE:.2f} s of audio)")
    starts = window_starts(seconds, t, settings.window)
    counts = [min(t, seconds - s) for s in starts]
    log_mels = [examples_per_second(samples[s * SAMPLE_RATE:(s + n) * SAMPLE_RATE].reshape(n, SAMPLE_RATE))
                for s, n in zip(starts, counts)]
    frames = None
    if settings.video:
        instants = np.concatenate([segment_instants(s, n, settings.frames_per_second) for s, n in zip(starts, counts)])
        frames = decode_frames(path, audio_start + instants, settings.frame_size)
    windows, row = [], 0
    for s, n, mel in zip(starts, counts, log_mels):
        windows.append(Window(start=s, log_mel=mel, frames=None if frames is None else frames[row:row + n]))
        row += n
    return DecodedClip(seconds=seconds, windows=windows)


def decode_job(job: tuple[int, str, DecodeSettings]) -> tuple[int, DecodedClip | str]:
    """Worker entry point: (file index, clip or the reason it is unusable). Every failure of a
    file becomes a reason, so one bad file never stops the run."""
    index, path, settings = job
    try:
        return index, decode_clip(path, settings)
    except UnusableMedia as exc:
        return index, str(exc)
    except Exception as exc:  # a decoder failure we did not anticipate is still about this file
        return index, f"decoding failed ({_describe(exc)})"


def _exit_with_parent(parent: int) -> None:
    """Decode worker setup: end this worker when the extraction process is gone (killed with
    SIGKILL, a worker would otherwise wait for work forever)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def decoded_in_order(jobs: list, workers: int):
    """(file index, clip or reason) in input order; with workers, at most 2 x workers files are
    decoded ahead of the models, so memory stays bounded however many files there are."""
    if workers == 0:
        for job in jobs:
            yield decode_job(job)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = deque()

        def oldest():
            job, future = pending.popleft()
            try:
                return future.result()
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a decode worker died while decoding {job[1]} or a file after it (FFmpeg crashed?); "
                    "rerun the same command to resume, or use --workers 0 to find the file") from None

        for job in jobs:
            pending.append((job, pool.submit(decode_job, job)))
            if len(pending) >= 2 * workers:
                yield oldest()
        while pending:
            yield oldest()
