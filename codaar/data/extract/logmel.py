"""VGGish's input: log-mel examples of 0.96 s, exactly as the published model specifies.

Parameters (``vggish_params.py`` / ``mel_features.py`` of the original release): 16 kHz mono;
STFT magnitude with a 25 ms periodic Hann window (400 samples) and a 10 ms hop (160), FFT size
the next power of two (512); 64 mel bands on HTK's mel scale (1127 ln(1 + f/700)) spanning
125-7500 Hz, triangular in mel, DC bin zeroed; log(mel + 0.01); examples of 96 frames (0.96 s).

One example per one-second segment (the convention of the AVE features the paper uses): each
second gives 98 STFT frames, and the example is its first 96. numpy only, so it runs in the decode
workers.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_SECONDS = 0.96

WINDOW_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))  # 400
HOP_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW_SAMPLES)))  # 512
EXAMPLE_FRAMES = int(round(EXAMPLE_SECONDS / STFT_HOP_SECONDS))  # 96


def hertz_to_mel(hertz):
    """HTK's mel scale, as VGGish uses it."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_matrix(num_bands: int = NUM_BANDS, num_bins: int = FFT_LENGTH // 2 + 1, sample_rate: int = SAMPLE_RATE,
               low_hz: float = MEL_MIN_HZ, high_hz: float = MEL_MAX_HZ) -> np.ndarray:
    """[num_bins, num_bands] weights: band b is a triangle in mel from edge b to edge b+2 of
    num_bands + 2 evenly spaced mel edges, peaking (1.0) at edge b+1; the DC bin has no weight."""
    bin_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(hertz_to_mel(low_hz), hertz_to_mel(high_hz), num_bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


_MEL = mel_matrix()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)  # periodic Hann


def log_mel(signal: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram of the last axis: [..., samples] -> [..., frames, 64] float64, with
    frames = 1 + (samples - 400) // 160 (no padding: a frame is computed only where it fits)."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.shape[-1] < WINDOW_SAMPLES:
        raise ValueError(f"log_mel: expected at least {WINDOW_SAMPLES} samples, got {signal.shape[-1]}")
    frames = np.lib.stride_tricks.sliding_window_view(signal, WINDOW_SAMPLES, axis=-1)[..., ::HOP_SAMPLES, :]
    magnitude = np.abs(np.fft.rfft(frames * _HANN, FFT_LENGTH, axis=-1))
    return np.log(magnitude @ _MEL + LOG_OFFSET)


def examples_per_second(seconds: np.ndarray) -> np.ndarray:
    """[n, 16000] one-second waveforms -> [n, 96, 64] float32 VGGish examples (one per second)."""
    seconds = np.asarray(seconds)
    if seconds.ndim != 2 or seconds.shape[1] != SAMPLE_RATE:
        raise ValueError(f"examples_per_second: expected [n, {SAMPLE_RATE}] one-second waveforms, "
                         f"got shape {list(seconds.shape)}")
    return log_mel(seconds)[:, :EXAMPLE_FRAMES].astype(np.float32)
