"""Loading a checkpoint and a data set for evaluation, with clear errors; frozen code features.

Every problem with the inputs (a folder that is no checkpoint, a model from another setting, feature
sizes that do not match, missing labels) raises `EvaluationError` with a message naming the file or
field, what was expected and what was found -- never a traceback from inside the model.
"""

from __future__ import annotations

import numpy as np
import torch

from codaar.data import DataFormatError, TriModalData, build_synthetic, load_dataset, synthetic_config
from codaar.evaluate.errors import EvaluationError
from codaar.model import CoDAARModel
from codaar.model import pretrained as trained
from codaar.model.pretrained import Pretrained

__all__ = ["Pretrained", "check_compatible", "code_features", "inputs", "load_eval_data", "load_pretrained",
           "require_labels", "require_split", "text_mask"]


def load_pretrained(path) -> Pretrained:
    """Model (weights, codebooks) of a checkpoint folder or a run folder, on the CPU, in float32
    (`codaar.model.pretrained.load_pretrained`, its errors as EvaluationError)."""
    try:
        return trained.load_pretrained(path)
    except trained.CheckpointError as exc:
        raise EvaluationError(f"checkpoint: {exc}") from None


def load_eval_data(pretrained: Pretrained, data_dir: str | None = None, data_preset: str | None = None,
                   data_seed: int | None = None, modalities: tuple[str, ...] | None = None) -> TriModalData:
    """The data set to evaluate on: `data_dir`, or a built-in preset, or (default) the data set the
    checkpoint was pretrained on (its config's data folder, or data_preset / data_seed / pretrain_clips).
    It must fit the model in `modalities` (default: all of the model's)."""
    cfg = pretrained.train_config
    try:
        if data_dir is not None:
            data = load_dataset(data_dir)
        elif data_preset is None and cfg.data:
            data = load_dataset(cfg.data)
        else:
            same = data_preset is None or data_preset == cfg.data_preset
            preset = data_preset or cfg.data_preset
            overrides = {}
            if same and cfg.pretrain_clips is not None:
                overrides["num_pretrain"] = cfg.pretrain_clips
            seed = data_seed if data_seed is not None else cfg.data_seed
            data = build_synthetic(synthetic_config(preset, seed=seed, **overrides))
    except DataFormatError as exc:
        raise EvaluationError(f"data: {exc}") from None
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"data: {exc}") from None
    check_compatible(pretrained, data, modalities=modalities)
    return data


def check_compatible(pretrained: Pretrained, data: TriModalData, name: str = "data",
                     modalities: tuple[str, ...] | None = None) -> None:
    """The data has every modality of the model (or of `modalities`), with the feature sizes it was
    trained on."""
    model = pretrained.model
    modalities = model.modalities if modalities is None else modalities
    where = data.root if data.root is not None else f"<built-in {data.info.get('preset', 'data set')}>"
    missing = [m for m in modalities if m not in data.modalities]
    if missing:
        raise EvaluationError(f"{name} {where}: the checkpoint {pretrained.path} is a {'/'.join(model.modalities)} "
                              f"model; expected modalities {list(modalities)}, found {list(data.modalities)}")
    for m in modalities:
        shape, want = data.feature_shape(m), model.input_shape(m)
        if len(shape) != len(want) or any(w is not None and w != n for w, n in zip(want, shape)):
            what = (f"spatial features [H, W, {want[-1]}]" if None in want else f"{list(want)} features")
            raise EvaluationError(f"{name} {where}: field '{m}': expected {what} per step "
                                  f"(model_config of {pretrained.path}), found {list(shape)}")


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


def inputs(data: TriModalData, modality: str, clips: np.ndarray) -> torch.Tensor:
    """The model's input for `clips` (float32), in the order given."""
    clips = np.asarray(clips)
    source = data.text(clips) if modality == "text" else data.modality(modality)[np.sort(clips)]
    if modality != "text":  # sorted reads for memory maps, then back to the requested order
        order = np.argsort(np.argsort(clips, kind="stable"), kind="stable")
        source = np.asarray(source)[order]
    return torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))


def text_mask(data: TriModalData, modality: str, clips: np.ndarray) -> torch.Tensor | None:
    """The real tokens [N, L] of `clips`' text (all True for class prompts); None for other modalities."""
    if modality != "text":
        return None
    return torch.from_numpy(np.ascontiguousarray(data.text_mask(np.asarray(clips))))


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
