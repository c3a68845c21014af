"""The AVSBench-S4 cross-modal segmentation task (paper Table 4, docs/method.md §7.6).

The pretrained CoDAAR model is frozen. A clip's query is its quantized full code rows ([M·D] each)
of one modality: audio, its five seconds of VGGish features (one row per frame); text, its class
prompt (the prompt's token rows pooled over time to one row per frame: adaptive average pooling,
a fixed stand-in for the authors' Linear(10 -> 5) that never trains). A segmenter
(`segmenter.Segmenter`) trains on the frames with masks (train split: the first frame) under the
queries of one modality, with BCE + soft IoU, Adam; the epoch with the best validation mIoU under the *same*
modality's queries is kept (the target modality is never seen); it is then scored on the test split
(all five masks) with the queries of every modality: A->T and T->A (Table 4), the same-modality
references T->T and A->A, a wrong-class reference (the text query of another class, drawn per clip),
and a no-query baseline (the same segmenter trained and tested with a zero query).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from codaar.data.avsbench import FRAMES, AVSData
from codaar.evaluate.errors import EvaluationError

from .backbones import backbone as make_backbone
from .metrics import clip_scores
from .segmenter import Segmenter, segmentation_loss

QUERIES = ("text", "audio")
NO_QUERY = "none"
WRONG_CLASS = "text-wrong-class"
SHORT = {"text": "T", "audio": "A", NO_QUERY: "no query", WRONG_CLASS: "T (wrong class)"}


@dataclass(frozen=True)
class AVSSettings:
    lr: float = 3e-3
    batch_size: int = 16
    epochs: int = 16
    backbone: str = "tiny"
    backbone_weights: str | None = None
    random_backbone: bool = False
    width: int = 64
    seed: int = 43
    show_clips: int = 4  # test clips kept for the mask pictures


def _rows(model, modality: str, x: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch], np.float32))
            mask = torch.ones(chunk.shape[:2], dtype=torch.bool) if modality == "text" else None
            out.append(model.codes(modality, chunk, mask).rows.float())
    return torch.cat(out)


def clip_queries(pretrained, data: AVSData) -> dict[str, torch.Tensor]:
    """{modality: [N, 5, M·D]} full code rows per frame, plus the zero and the wrong-class queries."""
    model = pretrained.model
    missing = [m for m in QUERIES if m not in model.modalities]
    if missing:
        raise EvaluationError(f"--tasks avs: the checkpoint {pretrained.path} is a {'/'.join(model.modalities)} "
                              f"model; expected audio and text (an AVT model), missing {missing}")
    for modality, shape in (("audio", data.audio.shape[2:]), ("text", data.text_table.shape[2:])):
        want = model.input_shape(modality)
        if tuple(shape) != tuple(want):
            raise EvaluationError(f"--avs-data {data.root}: field '{modality}': expected {list(want)} features per "
                                  f"step (model_config of {pretrained.path}), found {list(shape)}")
    model.eval()
    audio = _rows(model, "audio", data.audio)  # [N, 5, F]
    per_class = _rows(model, "text", data.text_table)  # [C, L, F]
    per_class = F.adaptive_avg_pool1d(per_class.transpose(1, 2), FRAMES).transpose(1, 2)  # [C, 5, F]
    category = torch.from_numpy(data.category)
    shift = torch.from_numpy(np.random.default_rng(0).integers(1, len(data.class_names), size=data.num_clips))
    return {"text": per_class[category], "audio": audio, NO_QUERY: torch.zeros_like(audio),
            WRONG_CLASS: per_class[(category + shift) % len(data.class_names)]}


def _frames(data: AVSData, clips: np.ndarray) -> torch.Tensor:
    """float [n, 5, 3, S, S] in 0..1."""
    return torch.from_numpy(data.frames(clips)).permute(0, 1, 4, 2, 3).float().div_(255)


def predict(segmenter: Segmenter, data: AVSData, clips: np.ndarray, query: torch.Tensor, batch: int = 8):
    """Mask logits [n, 5, S, S] of `clips` under `query` [N, 5, F]."""
    segmenter.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(clips), batch):
            chunk = clips[start : start + batch]
            frames = _frames(data, chunk).flatten(0, 1)
            logits = segmenter(frames, query[torch.from_numpy(chunk)].flatten(0, 1))
            out.append(logits.view(len(chunk), FRAMES, *logits.shape[1:]))
    return torch.cat(out)


def score(segmenter, data: AVSData, clips: np.ndarray, query: torch.Tensor) -> tuple[dict, torch.Tensor]:
    logits = predict(segmenter, data, clips, query)
    masks, _ = data.masks(clips)
    return clip_scores(logits, torch.from_numpy(masks)), logits


def train_segmenter(data: AVSData, query: torch.Tensor, settings: AVSSettings, log=print, label: str = "") -> tuple:
    """A segmenter trained on the train split's masked frames under `query`, the epoch of the best val
    mIoU under the same query; returns (segmenter, info)."""
    torch.manual_seed(settings.seed)
    try:
        net = make_backbone(settings.backbone, settings.backbone_weights, settings.random_backbone)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    segmenter = Segmenter(net, query.shape[-1], settings.width)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=settings.lr)
    splits = data.splits
    for split in ("train", "val", "test"):
        if len(splits[split]) == 0:
            raise EvaluationError(f"--avs-data {data.root}: field 'split': expected clips in the {split} split, "
                                  "found none")
    train = splits["train"]
    _, valid = data.masks(train)
    pairs = np.argwhere(valid)  # (row in train, frame) with a mask
    generator = torch.Generator().manual_seed(settings.seed)
    best, best_state, history = -1.0, None, []
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        segmenter.train()
        order = pairs[torch.randperm(len(pairs), generator=generator).numpy()]
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            clips = train[batch[:, 0]]
            frames = _frames(data, clips)[torch.arange(len(batch)), torch.from_numpy(batch[:, 1])]
            masks = torch.from_numpy(data.masks(clips)[0][np.arange(len(batch)), batch[:, 1]])
            logits = segmenter(frames, query[torch.from_numpy(clips), torch.from_numpy(batch[:, 1])])
            loss = segmentation_loss(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val, _ = score(segmenter, data, splits["val"], query)
        history.append({"epoch": epoch, "loss": total / len(pairs), "val_miou": val["miou"]})
        if val["miou"] > best:
            best, best_state = val["miou"], copy.deepcopy(segmenter.state_dict())
        log(f"[avs] {label} epoch {epoch + 1}/{settings.epochs}: loss {total / len(pairs):.4f}, val mIoU "
            f"{val['miou']:.1f}")
    segmenter.load_state_dict(best_state)
    info = {"best_epoch": int(np.argmax([h["val_miou"] for h in history])), "val_miou": best, "history": history,
            "train_seconds": time.perf_counter() - started}
    return segmenter, info


def run_avs(pretrained, data: AVSData, settings: AVSSettings = AVSSettings(), log=print) -> tuple[dict, dict]:
    """Train with each query modality (and with none), score on the test split with every query.

    Returns (result, pictures): result {"settings", "data", "by_source": {source: {"info", "test": {query:
    {"miou", "f_score"}}}}}; pictures {"clips", "frames", "masks", "<source>-><query>": logits} for the
    first `show_clips` test clips (the mask pictures)."""
    queries = clip_queries(pretrained, data)
    test = data.splits["test"]
    shown = test[: settings.show_clips]
    result = {"settings": asdict(settings), "data": str(data.root), "by_source": {}}
    pictures = {"clips": shown, "frames": data.frames(shown), "masks": data.masks(shown)[0]}
    for source, targets in (("text", ("text", "audio", WRONG_CLASS)), ("audio", ("audio", "text")),
                            (NO_QUERY, (NO_QUERY,))):
        segmenter, info = train_segmenter(data, queries[source], settings, log, label=f"trained on {SHORT[source]}")
        scores = {}
        for target in targets:
            scores[target], logits = score(segmenter, data, test, queries[target])
            pictures[f"{source}->{target}"] = logits[: len(shown)].numpy()
            log(f"[avs] {SHORT[source]} -> {SHORT[target]}: mIoU {scores[target]['miou']:.1f}, F "
                f"{scores[target]['f_score']:.1f}")
        result["by_source"][source] = {"info": info, "test": scores}
    return result, pictures
