"""`ExtractSettings`: every option of ``python -m codaar.data extract``, declared once (codaar.settings).

The flags of the command come from these declarations (`add_flags`), with their help, default,
choices and bounds; a bad value stops the run before anything is read or written, naming the
setting, what was expected and what was found. This module stays light (no torch, no PyAV): the
command line is built from it.
"""

from __future__ import annotations

import math

from codaar.settings import SettingsError, setting, settings

from .captions import CAPTION_POLICIES
from .media import WINDOW_POLICIES

VGGISH_POSTPROCESS = ("none", "pca", "pca-quantize")
VIDEO_POOLING = ("none", "mean")
TEXT_FEATURIZERS = ("hashed", "bert")
DTYPES = ("float32", "float16")
# VGG-19 pools five times (vgg19.STRIDE, not imported here: that module imports torch)
FRAME_STRIDE = 32


@settings
class ExtractSettings:
    # segments
    segments: int = setting(10, "one-second segments per clip, T", at_least=1)
    window: str = setting("first", "for clips longer than T: first (seconds 0..T), centre, or every full window as "
                          "its own clip (id CLIP@<start>s); clips shorter than T repeat their last second",
                          choices=WINDOW_POLICIES)
    # models and weights
    vggish_weights: str | None = setting(None, "VGGish weights (.pth state_dict in the torchvggish layout, or "
                                         ".safetensors); none: the published vggish-10086976.pth through torch "
                                         "hub's cache", metavar="FILE")
    vggish_pca_params: str | None = setting(None, "VGGish PCA parameters for --vggish-postprocess; none: the "
                                            "published vggish_pca_params-970ea276.pth through torch hub's cache",
                                            metavar="FILE")
    vgg19_weights: str | None = setting(None, "VGG-19 weights (torchvision's state_dict layout, .pth or "
                                        ".safetensors); none: torchvision's published IMAGENET1K_V1 file through "
                                        "torch hub's cache", metavar="FILE")
    random_weights: bool = setting(False, "seeded random weights instead (tests and smoke runs only; stamped into "
                                   "the manifest)")
    seed: int = setting(0, "seed of --random-weights and of the split shuffle", at_least=0)
    vggish_postprocess: str = setting("none", "none: raw 128-d embeddings; pca: PCA + whitening; pca-quantize: also "
                                      "clipped to [-2, 2] and quantised to 0..255, the released AudioSet "
                                      "embeddings' format", choices=VGGISH_POSTPROCESS)
    frames_per_second: int = setting(1, "frames per segment whose pool5 maps are averaged (1: the frame at the "
                                     "centre of each second; AVE's features averaged 16)", at_least=1)
    frame_size: int = setting(224, f"frames are resized to this square size (224 -> a 7x7 pool5 map; a multiple "
                              f"of {FRAME_STRIDE})", at_least=FRAME_STRIDE)
    video_pooling: str = setting("none", "none: the 7x7x512 map; mean: averaged over positions to 512",
                                 choices=VIDEO_POOLING)
    video: bool = setting(True, "decode video and run VGG-19 (--no-video: the video features are zero)")
    device: str | None = setting(None, "torch device for the models (none: cuda if available, else cpu)",
                                 metavar="DEVICE")
    dtype: str = setting("float32", "stored feature dtype", choices=DTYPES)
    # text, labels, splits
    captions: str | None = setting(None, "CSV clip_id,caption (any number of captions per clip): per-clip text",
                                   metavar="CSV")
    caption_policy: str = setting("first", "first: a clip's first caption; each: every caption its own clip "
                                  "(id CLIP#k)", choices=CAPTION_POLICIES)
    labels: str | None = setting(None, "CSV clip_id,class[,start,end][,split]: classes, per-segment labels and "
                                 "train/val/test splits (none: one class 'unlabeled', a pretrain split only)",
                                 metavar="CSV")
    prompts: str | None = setting(None, "CSV label,prompt for the class prompts (none: the class name)",
                                  metavar="CSV")
    splits: tuple[float, ...] = setting((0.8, 0.1, 0.1), "train,val,test fractions for --labels without a split "
                                        "column (files are shuffled with --seed, all windows of a file stay in one "
                                        "split)", at_least=0, at_most=1, metavar="TRAIN,VAL,TEST")
    text_featurizer: str = setting("hashed", "hashed: the offline featurizer; bert: a BERT on disk (--bert-path), "
                                   "never downloaded", choices=TEXT_FEATURIZERS)
    text_dim: int = setting(768, "width of the hashed text embeddings", at_least=1)
    bert_path: str | None = setting(None, "folder of a saved BERT model (for --text-featurizer bert)",
                                    metavar="DIR")
    bert_keep_ids: str | None = setting(None, "JSON list/dict of BERT token ids to keep", metavar="FILE")
    # operation
    workers: int = setting(0, "decode processes (0: decode in this process)", at_least=0)
    max_bad_fraction: float = setting(0.1, "fail if more than this fraction of the files is unusable", at_least=0,
                                      at_most=1)

    def __post_init__(self) -> None:
        self.validate_fields()
        if self.frame_size % FRAME_STRIDE:
            raise SettingsError("frame_size", f"a multiple of {FRAME_STRIDE} (VGG-19 pools five times), at least "
                                f"{FRAME_STRIDE}", self.frame_size)
        fractions = self.splits
        if len(fractions) != 3 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6) or not fractions[0]:
            raise SettingsError("splits", "three fractions train,val,test summing to 1 with train > 0",
                                ",".join(map(str, fractions)))
