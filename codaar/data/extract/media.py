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
import queue
import threading
import time
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


def _mono(frame) -> np.ndarray:
    return frame.to_ndarray().mean(axis=0, dtype=np.float64).astype(np.float32)


class _AudioSeconds:
    """The first audio stream of an open container as mono 16 kHz samples, decoded as they are read,
    whole seconds at a time; memory holds what one read returns."""

    def __init__(self, container):
        if not container.streams.audio:
            raise UnusableMedia("no audio track")
        self.start_time: float | None = None  # stream time (s) of the first sample, known after the first read
        self.samples = 0  # decoded so far, a trailing part of a second included
        self._chunks = self._decoded(container, container.streams.audio[0])
        self._pending: list[np.ndarray] = []
        self._held = 0

    def _decoded(self, container, stream):
        import av

        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # keeps the channels; averaged here
        try:
            for frame in container.decode(stream):
                if self.start_time is None:
                    self.start_time = float(frame.time or 0.0)
                for out in resampler.resample(frame):
                    chunk = _mono(out)
                    self.samples += chunk.size
                    yield chunk
            for out in resampler.resample(None):
                chunk = _mono(out)
                self.samples += chunk.size
                yield chunk
        except Exception as exc:
            raise UnusableMedia(f"corrupt audio stream after {self.samples / SAMPLE_RATE:.2f} s "
                                f"({_describe(exc)})") from None

    def read(self, seconds: int) -> np.ndarray:
        """The next `seconds` whole seconds of samples; fewer whole seconds where the stream ends first
        (a trailing part of a second is never returned)."""
        wanted = seconds * SAMPLE_RATE
        while self._held < wanted:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending.append(chunk)
            self._held += chunk.size
        taken = min(wanted, self._held // SAMPLE_RATE * SAMPLE_RATE)
        held = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._held = ([held[taken:]] if held.size > taken else []), held.size - taken
        return held[:taken]

    def skip(self, seconds: int | None, step: int) -> None:
        """Read and drop `seconds` whole seconds (None: all that are left), `step` at a time."""
        while seconds is None or seconds > 0:
            read = self.read(step if seconds is None else min(step, seconds)).size // SAMPLE_RATE
            if read == 0:
                return
            if seconds is not None:
                seconds -= read

    def close(self) -> None:
        self._chunks.close()


class _FramePicker:
    """The decoded frames nearest to instants given in ascending order over successive calls, converted
    to RGB S x S; the video stream is decoded once, front to back, as the instants advance."""

    def __init__(self, path: Path, size: int):
        self.container = _open(path)
        self.stream = self.container.streams.video[0] if self.container.streams.video else None
        self.size = size
        self.previous = self.current = None  # [time, frame, its RGB array once converted]
        self.ended = False
        self._frames = self._decoded() if self.stream is not None else None

    def _decoded(self):
        rate = self.stream.average_rate or self.stream.guessed_rate
        try:
            for index, frame in enumerate(self.container.decode(self.stream)):
                when = frame.time
                if when is None:
                    if not rate:
                        raise UnusableMedia("video frames without timestamps or frame rate")
                    when = index / float(rate)
                yield [when, frame, None]
        except UnusableMedia:
            raise
        except Exception as exc:
            raise UnusableMedia(f"corrupt video stream ({_describe(exc)})") from None

    def _rgb(self, entry) -> np.ndarray:
        if entry[2] is None:
            entry[2] = entry[1].to_ndarray(format="rgb24", width=self.size, height=self.size, interpolation="BILINEAR")
        return entry[2]

    def pick(self, instants: np.ndarray) -> np.ndarray | None:
        """RGB frames [*instants.shape, S, S, 3] uint8 (None when the file has no video stream): for each
        instant the nearer of the frames just before and at/after it (ties: the earlier); a video that
        ends first holds its last frame."""
        if self._frames is None:
            return None
        picks = []
        for instant in instants.reshape(-1):
            while not self.ended and (self.current is None or self.current[0] < instant):
                if self.current is not None:
                    self.previous = self.current
                self.current = next(self._frames, None)
                self.ended = self.current is None
            if self.ended:
                if self.previous is None:
                    raise UnusableMedia("video track without decodable frames")
                picks.append(self._rgb(self.previous))
            elif self.previous is not None and instant - self.previous[0] <= self.current[0] - instant:
                picks.append(self._rgb(self.previous))
            else:
                picks.append(self._rgb(self.current))
        return np.stack(picks).reshape(instants.shape + (self.size, self.size, 3))

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self.container.close()


class ClipWindows:
    """The windows of one media file, decoded as they are iterated: memory holds one window's samples,
    log-mel examples and frames, however long the file (an hour of audio is 230 MB of samples).

    Iterating raises `UnusableMedia` with the reason when the file cannot give a clip, possibly after
    some windows ("every": a stream corrupt in its middle). `seconds`: the whole seconds of audio
    decoded (all of them once iterated; "first" stops after T). The "centre" policy decodes the audio
    twice: once to count its seconds, once up to the window."""

    def __init__(self, path, settings: DecodeSettings):
        self.path, self.settings, self.seconds = Path(path), settings, 0

    def __iter__(self):
        if not self.path.is_file():
            raise UnusableMedia("no such file")
        if self.path.stat().st_size == 0:
            raise UnusableMedia("zero length (empty file)")
        settings = self.settings
        with _open(self.path) as container:
            audio, frames = _AudioSeconds(container), None
            try:
                frames = _FramePicker(self.path, settings.frame_size) if settings.video else None
                for start, samples in self._audio_windows(audio):
                    count = samples.size // SAMPLE_RATE
                    instants = audio.start_time + segment_instants(start, count, settings.frames_per_second)
                    yield Window(start=start, log_mel=examples_per_second(samples.reshape(count, SAMPLE_RATE)),
                                 frames=None if frames is None else frames.pick(instants))
            finally:
                audio.close()
                if frames is not None:
                    frames.close()

    def _audio_windows(self, audio: _AudioSeconds):
        """(first second, samples) of each window the policy takes (see `window_starts`)."""
        t, policy = self.settings.segments, self.settings.window
        if policy not in WINDOW_POLICIES:
            raise ValueError(f"window policy: expected one of {WINDOW_POLICIES}, got {policy!r}")
        first = audio.read(t)
        self.seconds = first.size // SAMPLE_RATE
        if self.seconds == 0:
            if audio.samples == 0:
                raise UnusableMedia("zero length (no audio samples decoded)")
            raise UnusableMedia(f"shorter than one second ({audio.samples / SAMPLE_RATE:.2f} s of audio)")
        if policy == "first" or self.seconds < t:
            yield 0, first
        elif policy == "every":
            yield 0, first
            while (block := audio.read(t)).size:
                self.seconds += block.size // SAMPLE_RATE
                if block.size < t * SAMPLE_RATE:
                    return  # a tail shorter than T is dropped
                yield self.seconds - t, block
        else:  # centre: count the seconds, then decode again up to the window
            audio.skip(None, t)
            self.seconds = audio.samples // SAMPLE_RATE
            start = window_starts(self.seconds, t, policy)[0]
            if start == 0:
                yield 0, first
                return
            with _open(self.path) as container:
                again = _AudioSeconds(container)
                try:
                    again.skip(start, t)
                    window = again.read(t)
                finally:
                    again.close()
            yield start, window


def decode_clip(path, settings: DecodeSettings) -> DecodedClip:
    """Every window of one file at once (`ClipWindows` streams them); raises `UnusableMedia` with the
    reason when the file cannot give a clip."""
    clip = ClipWindows(path, settings)
    windows = list(clip)
    return DecodedClip(seconds=clip.seconds, windows=windows)


def _guarded(clip: ClipWindows):
    """The windows of `clip`; a decoder failure we did not anticipate is still about this file."""
    windows = iter(clip)
    while True:
        try:
            window = next(windows)
        except StopIteration:
            return
        except UnusableMedia:
            raise
        except Exception as exc:
            raise UnusableMedia(f"decoding failed ({_describe(exc)})") from None
        yield window


def _exit_with_parent(parent: int) -> None:
    """Decode worker setup: end this worker when the extraction process is gone (killed with
    SIGKILL, a worker would otherwise wait for work forever)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


WINDOWS_AHEAD = 2  # windows a decode worker may have ready before the models take them


def _decode_worker(jobs: list, windows, parent: int, fingerprint=None) -> None:
    """A decode process: the files of `jobs` in order, each as ("start", its fingerprint taken before
    it is read), its windows, then ("done", ...) or ("unusable", reason) on the queue `windows`."""
    _exit_with_parent(parent)
    for index, path, settings in jobs:
        windows.put(("start", index, fingerprint(path) if fingerprint else None))
        try:
            for window in _guarded(ClipWindows(path, settings)):
                windows.put(("window", index, window))
            windows.put(("done", index, None))
        except UnusableMedia as exc:
            windows.put(("unusable", index, str(exc)))


def _message(windows, worker, job) -> tuple[str, object]:
    """The next message of a decode worker about `job`."""
    while True:
        try:
            kind, index, payload = windows.get(timeout=1.0)
        except queue.Empty:
            if worker.is_alive():
                continue
            raise RuntimeError(
                f"a decode worker died while decoding {job[1]} or a file after it (FFmpeg crashed?); "
                "rerun the same command to resume, or use --workers 0 to find the file") from None
        if index != job[0]:
            raise RuntimeError(f"decode worker out of order: file {index} while {job[0]} was expected")
        return kind, payload


def _received(windows, worker, job):
    """The windows of `job` as a decode worker sends them; UnusableMedia with the worker's reason."""
    while True:
        kind, payload = _message(windows, worker, job)
        if kind == "done":
            return
        if kind == "unusable":
            raise UnusableMedia(payload)
        yield payload


class FileWindows:
    """The windows of one file (an iterable) and `fingerprint`: the file's, taken before it was read."""

    def __init__(self, windows, fingerprint):
        self.windows, self.fingerprint = windows, fingerprint

    def __iter__(self):
        return iter(self.windows)


def decoded_in_order(jobs: list, workers: int, fingerprint=None):
    """(file index, its windows: `FileWindows`) in input order, for jobs (file index, path,
    DecodeSettings); iterating a file's windows (all of them, before the next file's) raises
    `UnusableMedia` with the reason a file cannot give a clip. `fingerprint` (a module-level function
    of a path) is applied to each file just before it is decoded, in the process that decodes it, so
    that the fingerprint journalled with the features describes the bytes they came from. With
    workers, worker w decodes files w, w + workers, ... and is at most WINDOWS_AHEAD windows ahead, so
    memory stays bounded however many and however long the files are."""
    if workers == 0:
        for index, path, settings in jobs:
            taken = fingerprint(path) if fingerprint else None
            yield index, FileWindows(_guarded(ClipWindows(path, settings)), taken)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    queues = [context.Queue(WINDOWS_AHEAD) for _ in range(workers)]
    processes = [context.Process(target=_decode_worker, args=(jobs[w::workers], queues[w], os.getpid(), fingerprint),
                                 daemon=True) for w in range(workers)]
    for process in processes:
        process.start()
    try:
        for k, job in enumerate(jobs):
            source, worker = queues[k % workers], processes[k % workers]
            _, taken = _message(source, worker, job)  # ("start", the fingerprint)
            yield job[0], FileWindows(_received(source, worker, job), taken)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
