"""The "avs" task of `python -m codaar.evaluate`: read the AVSBench-S4 folder, run `task.run_avs`.

The clips' text queries are the prompts' features in the folder (`text_features.npy`) or, without
them, the prompts featurized as the pretraining data's text was (its manifest's hashed featurizer).
"""

from __future__ import annotations

from dataclasses import replace

from codaar.data import DataFormatError, HashedTextFeaturizer
from codaar.data.avsbench import load_avsbench, vggish_embedder
from codaar.evaluate.errors import EvaluationError

from .backbones import PUBLISHED, backbone
from .task import AVSSettings, run_avs

DEFAULT_IMAGE_SIZE = 224  # the authors' frames; the built-in set records its own


def pretraining_featurizer(eval_data):
    """The hashed featurizer the pretraining data's text was made with, or None (BERT, unknown)."""
    described = dict(eval_data.info.get("text_featurizer") or {})
    if described.pop("kind", None) != "hashed":
        return None
    try:
        return HashedTextFeaturizer(**described)
    except TypeError:
        return None


def _image_size(folder) -> int:
    import json
    from pathlib import Path

    info = Path(folder) / "info.json"
    try:
        return int(json.loads(info.read_text())["config"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_IMAGE_SIZE


def run_avs_folder(pretrained, eval_data, folder, overrides: dict | None, image_size: int | None,
                   vggish_weights: str | None, log=print):
    settings = replace(AVSSettings(), **{k: v for k, v in (overrides or {}).items() if v is not None})
    if settings.backbone in PUBLISHED and settings.backbone_weights is None and not settings.random_backbone:
        try:
            backbone(settings.backbone)  # refuses, in one line, before any data is read
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
    try:
        embed = vggish_embedder(vggish_weights) if vggish_weights is not None else None
        data = load_avsbench(folder, image_size=image_size or _image_size(folder),
                             audio_dim=pretrained.model.input_shape("audio")[0],
                             text_featurizer=pretraining_featurizer(eval_data), embed_log_mel=embed)
        log(f"[avs] {data.summary()}")
        return run_avs(pretrained, data, settings, log)
    except (DataFormatError, FileNotFoundError) as exc:
        raise EvaluationError(f"--avs-data: {exc}") from None
