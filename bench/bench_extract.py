"""Feature extraction of one 10 s clip on the CPU with random weights and the paper's settings
(T = 10 one-second segments; VGGish on 16 kHz log-mel examples; one 224 x 224 frame per second
through VGG-19 to pool5), stage by stage: decoding (PyAV, a 320 x 240 25 fps mpeg4/aac clip),
VGGish on the 10 examples, VGG-19 on the 10 frames.

    python -m pytest bench/bench_extract.py --benchmark-columns=mean,stddev,rounds

The whole command, per file: ``python -m codaar.data extract OUT FOLDER --random-weights`` prints
the seconds per file (also in OUT/extract_report.json).
"""

from __future__ import annotations

import numpy as np
import pytest

from codaar.data.extract.features import FeatureModels, ModelSettings
from codaar.data.extract.media import DecodeSettings, decode_clip
from tests.extract_media import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("bench") / "clip.mp4", 10, size=(320, 240), fps=25)


@pytest.fixture(scope="module")
def models():
    return FeatureModels(ModelSettings(random_weights=True))


@pytest.fixture(scope="module")
def window(clip):
    return decode_clip(clip, DecodeSettings()).windows[0]


def test_decode(benchmark, clip):
    benchmark.group = "extract one 10 s clip, CPU"
    benchmark.pedantic(lambda: decode_clip(clip, DecodeSettings()), rounds=5, warmup_rounds=1)


def test_vggish(benchmark, models, window):
    benchmark.group = "extract one 10 s clip, CPU"
    benchmark.pedantic(lambda: models.audio(window.log_mel), rounds=5, warmup_rounds=1)


def test_vgg19(benchmark, models, window):
    benchmark.group = "extract one 10 s clip, CPU"
    out = benchmark.pedantic(lambda: models.video(window.frames, 10), rounds=3, warmup_rounds=1)
    assert out.shape == (10, 7, 7, 512) and np.isfinite(out).all()
