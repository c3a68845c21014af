"""Loading a checkpoint and a data set for evaluation, with clear errors; frozen code features.

Every problem with the inputs (a folder that is no checkpoint, a model from another setting, feature
sizes that do not match, missing labels) raises `EvaluationError` with a message naming the file or
field, what was expected and what was found -- never a traceback from inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codaar.data import DataFormatError, TriModalData, build_synthetic, load_dataset, synthetic_config
from codaar.evaluate.errors import EvaluationError
from codaar.model import CoDAARModel
from codaar.train import checkpoint as ckpt
from codaar.train.config import TrainConfig, saved_configs


@dataclass
class Pretrained:
    model: CoDAARModel
    meta: dict  # checkpoint meta.json
    train_config: TrainConfig  # the run's settings
    path: Path  # the checkpoint folder

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))


def load_pretrained(path: str | Path) -> Pretrained:
    """Model (weights, codebooks) of a checkpoint folder or a run folder, on the CPU, in float32."""
    try:
        tensors, meta = ckpt.load_checkpoint(Path(path))
        folder = ckpt.resolve_checkpoint(Path(path))
        train_config, model_config = saved_configs(meta, str(folder / "meta.json"))
    except ckpt.CheckpointError as exc:
        raise EvaluationError(f"checkpoint: {exc}") from None
    weights = ckpt.prefixed(tensors, "model")
    broken = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise EvaluationError(f"{folder / ckpt.TENSORS}: non-finite values in {', '.join(broken[:5])}"
                              f"{' and more' if len(broken) > 5 else ''} (the run diverged); evaluate an earlier "
                              f"checkpoint")
    try:
        model = CoDAARModel(model_config)
        model.load_state_dict(weights)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:400]
        raise EvaluationError(f"{folder / 'tensors.safetensors'}: the weights do not fit the model of meta.json "
                              f"'model_config' ({first})") from None
    model.float()
    model.quantizer.freeze(True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return Pretrained(model, meta, train_config, folder)


def load_eval_data(pretrained: Pretrained, data_dir: str | None = None, data_preset: str | None = None,
                   data_seed: int | None = None) -> TriModalData:
    """The data set to evaluate on: `data_dir`, or a built-in preset, or (default) the built-in data set
    the checkpoint was pretrained on (its config's data_preset / data_seed / pretrain_clips)."""
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
    check_compatible(pretrained, data)
    return data


def check_compatible(pretrained: Pretrained, data: TriModalData, name: str = "data") -> None:
    """The data has every modality of the model, with the feature sizes it was trained on."""
    cfg = pretrained.model.config
    where = data.root if data.root is not None else f"<built-in {data.info.get('preset', 'data set')}>"
    missing = [m for m in cfg.modalities if m not in data.modalities]
    if missing:
        raise EvaluationError(f"{name} {where}: the checkpoint {pretrained.path} is a {'/'.join(cfg.modalities)} model; "
                              f"expected modalities {list(cfg.modalities)}, found {list(data.modalities)}")
    expected = {"audio": (cfg.audio_dim,),
                "video": (cfg.video_dim,) if cfg.video_input == "vector" else None,
                "text": (cfg.text_dim,)}
    for m in cfg.modalities:
        shape = data.feature_shape(m)
        want = expected[m]
        if want is None:  # spatial video: [H, W, C]
            if len(shape) != 3 or shape[-1] != cfg.video_dim:
                raise EvaluationError(f"{name} {where}: field '{m}': expected spatial features [H, W, {cfg.video_dim}] "
                                      f"per step (model_config of {pretrained.path}), found {list(shape)}")
        elif tuple(shape) != want:
            raise EvaluationError(f"{name} {where}: field '{m}': expected {list(want)} features per step "
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
    clips = np.asarray(clips)
    source = data.text(clips) if modality == "text" else data.modality(modality)[np.sort(clips)]
    if modality != "text":  # sorted reads for memory maps, then back to the requested order
        order = np.argsort(np.argsort(clips, kind="stable"), kind="stable")
        source = np.asarray(source)[order]
    return torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))


def code_features(model: CoDAARModel, data: TriModalData, modality: str, clips: np.ndarray, head_input: str = "row",
                  train_mode: bool = False, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Frozen features of `clips`: "x" the head input [N, T, F] (full codebook row at the modality's own
    index, the authors' choice, or the own codeword with head_input="code"), "indices" [N, T], "latent"
    [N, T, D]. train_mode=True keeps dropout on (the authors' downstream scripts, spec §6.1)."""
    was_training = model.training
    model.train(train_mode)
    xs, idx, lat = [], [], []
    try:
        with torch.no_grad():
            for start in range(0, len(clips), batch_size):
                x = inputs(data, modality, clips[start : start + batch_size])
                z = model.encode(modality, x)
                out = model.quantizer.lookup(modality, z)
                xs.append(out.rows if head_input == "row" else out.codes)
                idx.append(out.indices)
                lat.append(z)
    finally:
        model.train(was_training)
    return {"x": torch.cat(xs).float(), "indices": torch.cat(idx), "latent": torch.cat(lat).float()}
