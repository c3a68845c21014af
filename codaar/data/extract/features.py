"""The feature models of one extraction run: VGGish (+ optional PCA/quantisation) for audio,
VGG-19 pool5 for video, with their weights and the manifest record of where those came from.

Each call runs one window of one clip (at most T segments), so a clip's features never depend on
which other clips happen to share a batch: a resumed run writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import weights as weight_files
from .vgg19 import CHANNELS, STRIDE, VGG19Pool5
from .vgg_stack import init_like_torchvision
from .vggish import EMBEDDING_SIZE, VGGish, VGGishPostprocess


@dataclass(frozen=True)
class ModelSettings:
    vggish_weights: str | None = None  # local files; None: the published ones (downloaded once)
    vggish_pca_params: str | None = None
    vgg19_weights: str | None = None
    random_weights: bool = False  # tests and smoke runs only; stamped into the manifest
    seed: int = 0  # of the random weights
    vggish_postprocess: str = "none"
    frame_size: int = 224
    video_pooling: str = "none"  # "mean": average the pool5 map over its positions -> [512]
    video: bool = True  # False: no VGG-19 (an audio-only run)
    device: str = "cpu"


def _empty(model_class, *args):
    """The model with uninitialised parameters: every one is then loaded or initialised, so
    torch's default init (seconds for VGGish's 72M parameters) would be wasted."""
    with torch.device("meta"):
        module = model_class(*args)
    return module.to_empty(device="cpu")


def _random_orthogonal(size: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class FeatureModels:
    """Builds the models (loading or initialising weights) and runs them on decoded windows."""

    def __init__(self, settings: ModelSettings):
        # the choices and the frame size were checked where they are declared (ExtractSettings)
        self.settings = settings
        self.device = torch.device(settings.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {settings.device}: this torch sees no CUDA device")
        self.records: dict[str, dict] = {}
        generator = torch.Generator().manual_seed(settings.seed)

        self.vggish = self._weights(VGGish, "vggish", settings.vggish_weights, generator)
        self.postprocess = None
        if settings.vggish_postprocess != "none":
            if settings.random_weights:
                self.postprocess = VGGishPostprocess(settings.vggish_postprocess)
                self.postprocess.pca_eigen_vectors.copy_(_random_orthogonal(EMBEDDING_SIZE, generator))
                self.records["vggish_pca"] = {"source": "random", "seed": settings.seed}
            else:
                self.postprocess = self._load(_empty(VGGishPostprocess, settings.vggish_postprocess), "vggish_pca",
                                              settings.vggish_pca_params)
        self.vgg19 = self._weights(VGG19Pool5, "vgg19", settings.vgg19_weights, generator) if settings.video else None
        for module in (self.vggish, self.postprocess, self.vgg19):
            if module is not None:
                module.to(self.device).eval()

    def _weights(self, model_class, name, path, generator):
        module = _empty(model_class)
        if not self.settings.random_weights:
            return self._load(module, name, path)
        init_like_torchvision(module, generator)
        self.records[name] = {"source": "random", "seed": self.settings.seed}
        return module

    def _load(self, module, name, path):
        file, record = weight_files.weight_file(name, path)
        weight_files.load_into(module, weight_files.read_state_dict(file), file)
        self.records[name] = record
        return module

    @property
    def video_shape(self) -> tuple[int, ...]:
        side = self.settings.frame_size // STRIDE
        return (CHANNELS,) if self.settings.video_pooling == "mean" else (side, side, CHANNELS)

    @torch.no_grad()
    def audio(self, log_mel: np.ndarray) -> np.ndarray:
        """[n, 96, 64] examples -> [n, 128] float32."""
        x = self.vggish(torch.from_numpy(log_mel).to(self.device))
        if self.postprocess is not None:
            x = self.postprocess(x)
        return x.float().cpu().numpy()

    @torch.no_grad()
    def video(self, frames: np.ndarray | None, count: int) -> np.ndarray:
        """[n, K, S, S, 3] uint8 frames -> [n, *video_shape] float32 (the K maps of a segment
        averaged); zeros for a file without a video stream."""
        if frames is None:
            return np.zeros((count,) + self.video_shape, np.float32)
        n, k = frames.shape[:2]
        maps = self.vgg19(torch.from_numpy(frames.reshape((n * k,) + frames.shape[2:])).to(self.device))
        maps = maps.reshape((n, k) + maps.shape[1:]).mean(dim=1)
        if self.settings.video_pooling == "mean":
            maps = maps.mean(dim=(1, 2))
        return maps.float().cpu().numpy()

    def describe(self) -> dict:
        """The manifest's record of the models: names, layers, weight sources and digests."""
        s = self.settings
        audio = {"model": "vggish", "output": "128-d embedding (fc2, no final ReLU)",
                 "postprocess": {"none": "none (raw embeddings)", "pca": "PCA + whitening (no clipping)",
                                 "pca-quantize": "PCA + whitening, clipped to [-2, 2], quantised to 0..255"}
                 [s.vggish_postprocess],
                 "weights": self.records["vggish"]}
        if "vggish_pca" in self.records:
            audio["pca_weights"] = self.records["vggish_pca"]
        models = {"audio": audio}
        if self.vgg19 is not None:
            models["video"] = {"model": "vgg19", "layer": "pool5", "input": f"RGB {s.frame_size}x{s.frame_size}, "
                               "ImageNet mean/std", "pooling": "mean over the map" if s.video_pooling == "mean"
                               else "none (channels-last map)", "weights": self.records["vgg19"]}
        return models
