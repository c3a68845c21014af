"""Loading a checkpoint and a data set for evaluation, with clear errors; frozen code features.

Every problem with the inputs (a folder that is no checkpoint, a model from another setting, feature
sizes that do not match, missing labels) raises `EvaluationError` with a message naming the file or
field, what was expected and what was found -- never a traceback from inside the model. The
loading itself is `codaar.pretrained`, shared with the code export.
"""

from __future__ import annotations

import numpy as np
import torch

from codaar import pretrained as trained
from codaar.data import TriModalData
from codaar.evaluate.errors import EvaluationError
from codaar.model import CoDAARModel
from codaar.pretrained import Pretrained, PretrainedDataError, inputs, text_mask

__all__ = ["check_compatible", "code_features", "load_eval_data", "load_pretrained", "require_labels",
           "require_split"]


def load_pretrained(path) -> Pretrained:
    """Model (weights, codebooks) of a checkpoint folder or a run folder, on the CPU, in float32
    (`codaar.pretrained.load_pretrained`, its errors as EvaluationError)."""
    try:
        return trained.load_pretrained(path)
    except trained.CheckpointError as exc:
        raise EvaluationError(f"checkpoint: {exc}") from None


def load_eval_data(pretrained: Pretrained, data_dir: str | None = None, data_preset: str | None = None,
                   data_seed: int | None = None, modalities: tuple[str, ...] | None = None) -> TriModalData:
    """The data set to evaluate on (`codaar.pretrained.load_eval_data`, its errors as EvaluationError)."""
    try:
        return trained.load_eval_data(pretrained, data_dir, data_preset, data_seed, modalities)
    except PretrainedDataError as exc:
        raise EvaluationError(str(exc)) from None


def check_compatible(pretrained: Pretrained, data: TriModalData, name: str = "data",
                     modalities: tuple[str, ...] | None = None) -> None:
    """The data fits the model (`codaar.pretrained.check_compatible`, its errors as EvaluationError)."""
    try:
        trained.check_compatible(pretrained, data, name, modalities)
    except PretrainedDataError as exc:
        raise EvaluationError(str(exc)) from None


def require_labels(data: TriModalData, modality: str | None, protocol: str, name: str = "data") -> np.ndarray:
    where = data.root if data.root is not None else "<built-in data set>"
    try:
        return data.segment_labels(modality)
    except KeyError:
        raise EvaluationError(f"{name} {where}: field 'labels': protocol {protocol} needs per-segment labels "
                              f"('segment' or per-modality), found {sorted(data.labels) or 'none'}") from None


def require_split(data: TriModalData, split: str, protocol: str, name: str = "data") -> np.ndarray:
    if split not in data.splits or len(data.splits[split]) == 0:
        where = data.root if data.root is not None else "<built-in data set>"
        raise EvaluationError(f"{name} {where}: field 'splits.{split}': protocol {protocol} needs a non-empty "
                              f"'{split}' split, found {sorted(k for k, v in data.splits.items() if len(v))}")
    return np.asarray(data.splits[split])


def code_features(model: CoDAARModel, data: TriModalData, modality: str, clips: np.ndarray, head_input: str = "row",
                  train_mode: bool = False, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Frozen features of `clips`: "x" the head input [N, T, F] (full codebook row at the modality's own
    index, the authors' choice, or the own codeword with head_input="code"), "indices" [N, T], "latent"
    [N, T, D], and for text "mask" [N, T] (its real tokens; the encoder reads only those, every step
    gets a code). train_mode=True keeps dropout on (the authors' downstream scripts, docs/method.md §7.1)."""
    was_training = model.training
    model.train(train_mode)
    xs, idx, lat, masks = [], [], [], []
    try:
        with torch.no_grad():
            for start in range(0, len(clips), batch_size):
                batch = clips[start : start + batch_size]
                mask = text_mask(data, modality, batch)
                z = model.latents(modality, inputs(data, modality, batch), mask)
                out = model.quantizer.lookup(modality, z)
                xs.append(out.rows if head_input == "row" else out.codes)
                idx.append(out.indices)
                lat.append(z)
                masks.append(mask)
    finally:
        model.train(was_training)
    features = {"x": torch.cat(xs).float(), "indices": torch.cat(idx), "latent": torch.cat(lat).float()}
    if modality == "text":
        features["mask"] = torch.cat(masks)
    return features
