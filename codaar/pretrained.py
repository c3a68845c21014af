"""A trained model with what it was trained on: the model of a checkpoint, the checkpoint's
metadata, the run's recorded settings, and the data set to run the model on.

One loader for the programs that read trained models: the evaluation (`codaar.evaluate`) and the
code export (`codaar.encode`); the model alone is `CoDAARModel.from_checkpoint`. Every problem with
the checkpoint (none there, a `latest` that leads outside the run, a corrupt tensor file, a meta.json
that differs from the metadata sealed in it, non-finite weights, weights of another name, shape or
dtype than the model of its settings) raises `CheckpointError` naming the file and what is wrong; data that cannot
be read or does not fit the model raises `PretrainedDataError` naming the data, the field, what was
expected and what was found.

Of the run's settings (the trainer's `TrainConfig`, as meta.json records it) only the model's and
the four that name the pretraining data are read, so a checkpoint stays readable here when the
trainer's other settings change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codaar.data import DataFormatError, TriModalData, build_synthetic, load_dataset, synthetic_config
from codaar.data import fingerprint as data_fingerprint
from codaar.model.codaar_model import CoDAARModel
from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.checkpoint import CheckpointError
from codaar.run_folder.metrics_log import METRICS_FILE

__all__ = ["CheckpointError", "Pretrained", "PretrainedDataError", "check_compatible", "data_provenance", "inputs",
           "load_eval_data", "load_pretrained", "provenance_note", "read_paths", "text_mask"]

# The run's settings that name its pretraining data, and the JSON types the trainer records them as.
PRETRAINING_DATA = {"data": (str, type(None)), "data_preset": (str,), "data_seed": (int,),
                    "pretrain_clips": (int, type(None))}


class PretrainedDataError(ValueError):
    """Data that cannot be read for a trained model, or does not fit it."""


@dataclass
class Pretrained:
    model: CoDAARModel
    meta: dict  # checkpoint meta.json
    path: Path  # the checkpoint folder

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def run_settings(self) -> Mapping[str, object]:
        """The run's settings as the checkpoint sealed them (`TrainConfig.to_dict()`; flat in a sealed
        format version 1 checkpoint)."""
        return self.meta["config"]

    @property
    def tensors_sha256(self) -> str:
        """SHA-256 of the checkpoint's tensor file, as the load verified it."""
        return self.meta["tensors_sha256"]


def load_pretrained(path: str | Path) -> Pretrained:
    """Model (weights, codebooks) of a checkpoint folder or a run folder (its `latest` checkpoint)."""
    tensors, meta = ckpt.load_checkpoint(Path(path))
    folder = ckpt.resolve_checkpoint(Path(path))
    model = CoDAARModel.from_saved(tensors, meta, folder)
    _check_pretraining_data(meta, str(folder / ckpt.META))
    return Pretrained(model, meta, folder)


def read_paths(pretrained: Pretrained, *data: TriModalData) -> dict[str, list[Path]]:
    """What a program running `pretrained` on `data` reads from disk: the checkpoint, its run's
    checkpoints, settings and metrics, and each data folder. The program's outputs keep clear of them
    (`codaar.runtime.outputs.check_output`); the rest of the run folder is free (`<run>/eval`)."""
    folder = Path(pretrained.path)
    reads = {"the checkpoint": [folder]}
    if folder.parent.name == "checkpoints":
        run = folder.parent.parent
        reads["the run's checkpoints"] = [folder.parent]
        reads["the run's settings and metrics"] = [run / "config.json", run / METRICS_FILE]
    reads["the data set"] = [d.root for d in data if d.root is not None]
    return reads


def _check_pretraining_data(meta: Mapping[str, object], where: str) -> None:
    settings = meta.get("config")
    if not isinstance(settings, Mapping):
        raise CheckpointError(f"{where}: field 'config': expected the run's settings (a JSON object), found "
                              f"{type(settings).__name__}")
    for name, kinds in PRETRAINING_DATA.items():
        value = settings.get(name)
        if not isinstance(value, kinds) or isinstance(value, bool):
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
            raise CheckpointError(f"{where}: field 'config.{name}': expected {expected}, found {value!r} (a "
                                  f"checkpoint of another codaar version?)")


def load_eval_data(pretrained: Pretrained, data_dir: str | None = None, data_preset: str | None = None,
                   data_seed: int | None = None, modalities: tuple[str, ...] | None = None) -> TriModalData:
    """The data set to run the model on: `data_dir`, or a built-in preset, or (default) the data set the
    checkpoint was pretrained on (its config's data folder, or data_preset / data_seed / pretrain_clips).
    It must fit the model in `modalities` (default: all of the model's).

    The checkpoint's own data must be the data it was trained on (its recorded fingerprint, when it
    has one): a change is refused. Other data the caller asked for is used; `data_provenance` says
    how it differs, for the outputs to state."""
    cfg = pretrained.run_settings
    asked = data_dir is not None or data_preset is not None or data_seed is not None
    try:
        if data_dir is not None:
            data = load_dataset(data_dir)
        elif data_preset is None and cfg["data"]:
            if not os.path.isabs(cfg["data"]):  # recorded as typed by a codaar before absolute paths
                raise PretrainedDataError(
                    f"data: {pretrained.path / ckpt.META}: field 'config.data': expected an absolute path, found "
                    f"{cfg['data']!r} (relative to a directory the run did not record); pass --data with the "
                    "folder the run was trained on")
            data = load_dataset(cfg["data"])
        else:
            same = data_preset is None or data_preset == cfg["data_preset"]
            preset = data_preset or cfg["data_preset"]
            overrides = {}
            if same and cfg["pretrain_clips"] is not None:
                overrides["num_pretrain"] = cfg["pretrain_clips"]
            seed = data_seed if data_seed is not None else cfg["data_seed"]
            data = build_synthetic(synthetic_config(preset, seed=seed, **overrides))
    except PretrainedDataError:
        raise
    except (DataFormatError, OSError, ValueError) as exc:
        raise PretrainedDataError(f"data: {exc}") from None
    check_compatible(pretrained, data, modalities=modalities)
    if not asked:
        current = _fingerprint(data)
        problem = data_fingerprint.refusal(pretrained.meta.get("data_fingerprint"), current, "running its model")
        if problem:
            raise PretrainedDataError(f"{problem}; recorded in {pretrained.path / ckpt.META}; pass --data to "
                                      "use this data anyway (the outputs then say so)")
    return data


def _fingerprint(data: TriModalData) -> dict:
    try:
        return data_fingerprint.data_fingerprint(data)
    except (DataFormatError, OSError) as exc:
        raise PretrainedDataError(f"data: {exc}") from None


def data_provenance(pretrained: Pretrained, data: TriModalData) -> dict:
    """What `data` is next to the data the checkpoint was pretrained on, for an output's manifest:
    {"data", "fingerprint", "pretraining_data", "same_as_pretraining" (None: not recorded), "differences"}."""
    recorded = pretrained.meta.get("data_fingerprint")
    current = _fingerprint(data)
    found = data_fingerprint.differences(recorded, current) if recorded is not None else []
    return {"data": data_fingerprint.describe(current), "fingerprint": current,
            "pretraining_data": data_fingerprint.describe(recorded),
            "same_as_pretraining": None if recorded is None else not found, "differences": found}


def provenance_note(provenance: dict) -> str | None:
    """A line for an output's tables when the data is not the pretraining data (None when it is)."""
    if provenance["same_as_pretraining"] is None:
        return f"data: {provenance['data']} (the checkpoint recorded no fingerprint of its pretraining data)"
    if provenance["same_as_pretraining"]:
        return None
    return (f"NOT THE PRETRAINING DATA: scored on {provenance['data']}; the model was pretrained on "
            f"{provenance['pretraining_data']} ({'; '.join(provenance['differences'])})")


def check_compatible(pretrained: Pretrained, data: TriModalData, name: str = "data",
                     modalities: tuple[str, ...] | None = None) -> None:
    """The data has every modality of the model (or of `modalities`), with the feature sizes it was
    trained on."""
    model = pretrained.model
    modalities = model.modalities if modalities is None else modalities
    where = data.root if data.root is not None else f"<built-in {data.info.get('preset', 'data set')}>"
    missing = [m for m in modalities if m not in data.modalities]
    if missing:
        raise PretrainedDataError(f"{name} {where}: the checkpoint {pretrained.path} is a "
                                  f"{'/'.join(model.modalities)} model; expected modalities {list(modalities)}, "
                                  f"found {list(data.modalities)}")
    for m in modalities:
        shape, want = data.feature_shape(m), model.input_shape(m)
        if len(shape) != len(want) or any(w is not None and w != n for w, n in zip(want, shape)):
            what = (f"spatial features [H, W, {want[-1]}]" if None in want else f"{list(want)} features")
            raise PretrainedDataError(f"{name} {where}: field '{m}': expected {what} per step "
                                      f"(model_config of {pretrained.path}), found {list(shape)}")


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
