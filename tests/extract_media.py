"""Small media files for the extraction tests, written with PyAV: second k of a clip shows one flat
colour (PALETTE[k % len]) and plays one sine tone (TONES_HZ[k % len]), so a test can tell which
second a decoded frame or audio example came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PALETTE = np.array([(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
                    (230, 30, 230), (240, 240, 240), (20, 20, 20), (140, 80, 20), (20, 100, 160)], np.uint8)
TONES_HZ = (300.0, 550.0, 900.0, 1400.0, 2100.0, 3000.0, 4200.0, 6000.0)
FPS = 4
SIZE = (32, 24)  # width, height (even: yuv420p)
AUDIO_RATE = 16000

# container suffix -> (video codec, audio codec)
CODECS = {".mp4": ("mpeg4", "aac"), ".mkv": ("mpeg4", "flac"), ".webm": ("libvpx", "libopus"),
          ".avi": ("mpeg4", "libmp3lame"), ".mov": ("mpeg4", "aac"), ".wav": (None, "pcm_s16le"),
          ".m4a": (None, "aac")}


def tone_of(second: int) -> float:
    return TONES_HZ[second % len(TONES_HZ)]


def colour_of(second: int) -> np.ndarray:
    return PALETTE[second % len(PALETTE)]


def signal(seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    freq = np.array(TONES_HZ)[np.floor(t).astype(int) % len(TONES_HZ)]
    phase = 2 * np.pi * np.cumsum(freq) / rate  # continuous phase across the tone changes
    return (0.4 * np.sin(phase)).astype(np.float32)


def write_clip(path, seconds: float, audio: bool = True, video: bool = True, stereo: bool = True,
               size: tuple[int, int] = SIZE, fps: int = FPS) -> Path:
    import av

    path = Path(path)
    video_codec, audio_codec = CODECS[path.suffix]
    video = video and video_codec is not None
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream(video_codec, rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = size[0], size[1], "yuv420p"
        if audio:
            astream = container.add_stream(audio_codec, rate=AUDIO_RATE, layout="stereo" if stereo else "mono")
        if video:
            for i in range(int(round(seconds * fps))):
                image = np.empty((size[1], size[0], 3), np.uint8)
                image[...] = colour_of(i // fps)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if audio:
            samples = signal(seconds)
            layout = "stereo" if stereo else "mono"
            channels = 2 if stereo else 1
            for start in range(0, samples.size, 1024):
                chunk = np.repeat(samples[None, start:start + 1024], channels, axis=0)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = AUDIO_RATE, start
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
    return path


def write_truncated(path, seconds: float = 4.0, keep: float = 0.4) -> Path:
    """A clip cut off after ``keep`` of its bytes (an mp4 loses its index: unreadable)."""
    path = write_clip(path, seconds)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
