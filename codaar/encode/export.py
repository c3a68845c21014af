"""Export the discrete codes of a trained model for a data set: per clip, per second, per modality.

Batches of clips go through `CoDAARModel.encode` (eval mode, frozen codebooks) and stream into
`.npy` memory maps, so a data set larger than RAM never sits in memory; the output folder appears
only when complete (`codaar.runtime.publish.atomic_output_dir`). Layout::

    manifest.json             format, version, checkpoint (folder, step, SHA-256 of its tensors), K, D,
                              modalities, T, clips, split, data, what was written, settings, and
                              pretraining_data: the data's fingerprint and how it differs from the
                              data the model was pretrained on (`codaar.pretrained.data_provenance`)
    clips.npy                 [N] int64       each row's clip index in the data set
    clip_ids.npy              [N] unicode     each row's clip id (when the data set has ids)
    indices/<modality>.npy    [N, T] int64    the code index of each second (text: each token step)
    quantized/<modality>.npy  [N, T, D]       the modality's codeword at that index (--with-quantized)
    rows/<modality>.npy       [N, T, M*D]     the full codebook row at that index (--with-rows)
    text_mask.npy             [N, T] bool     which text steps are real tokens (when text is encoded)

The codes equal those of the evaluation's features (`codaar.evaluate.features.code_features`) for
the same clips: the same model calls on the same batches (both 256 clips by default).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codaar.data.format import atomic_output_dir
from codaar.data.synthetic import PRESETS as DATA_PRESETS
from codaar.model.config import KNOWN_MODALITIES
from codaar.pretrained import (
    CheckpointError,
    Pretrained,
    PretrainedDataError,
    data_provenance,
    inputs,
    load_eval_data,
    load_pretrained,
    read_paths,
    text_mask,
)
from codaar.runtime.memmaps import reserved_memmap
from codaar.runtime.outputs import check_output
from codaar.settings import SettingsError, setting, settings

FORMAT = "codaar-codes"
VERSION = 1
MANIFEST = "manifest.json"
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class EncodeError(Exception):
    """Codes that cannot be exported as asked (the message names the input, what was expected and found)."""


@settings
class EncodeSettings:
    data: str | None = setting(None, "data folder in the project's format (none: the data set the run was trained "
                               "on, from its config)")
    data_preset: str | None = setting(None, "a built-in data set preset instead (none: the run's)",
                                      choices=tuple(DATA_PRESETS))
    data_seed: int | None = setting(None, "seed of the built-in data set (none: the run's)", at_least=0)
    split: str | None = setting(None, "encode the clips of this split only (none: every clip of the data set)")
    modalities: tuple[str, ...] | None = setting(None, "modalities to encode (none: all of the model's)",
                                                 choices=KNOWN_MODALITIES)
    with_quantized: bool = setting(False, "also write the quantized vectors [N, T, D]: the modality's codeword at "
                                   "each index")
    with_rows: bool = setting(False, "also write the full codebook rows [N, T, M*D]: every modality's codeword at "
                              "each index (what the downstream heads read)")
    batch_size: int = setting(256, "clips per forward pass", at_least=1)
    device: str = setting("cpu", "cpu, cuda or cuda:N (the evaluation computes its features on the cpu)",
                          metavar="{cpu,cuda,cuda:N}")

    def __post_init__(self) -> None:
        self.validate_fields()
        if not _DEVICE.match(self.device):
            raise SettingsError("device", "cpu, cuda or cuda:N", self.device)
        if self.modalities is not None and (not self.modalities or len(set(self.modalities)) != len(self.modalities)):
            raise SettingsError("modalities", "distinct modality names", ",".join(self.modalities))
        if self.split == "":
            raise SettingsError("split", "a split name", self.split)


def encode_dataset(checkpoint, out, settings: EncodeSettings | None = None, *, overwrite: bool = False,
                   progress: bool = False) -> dict:
    """Write the codes of `checkpoint` (a run folder or a checkpoint folder) for a data set to the
    folder `out`; returns the manifest. Raises EncodeError (or FileExistsError) on bad input, OutputError
    for an `out` that is, contains or lies inside what it reads, or cannot be written."""
    settings = settings or EncodeSettings()
    try:
        pretrained = load_pretrained(checkpoint)
    except CheckpointError as exc:
        raise EncodeError(f"checkpoint: {exc}") from None
    model = pretrained.model
    modalities = settings.modalities or model.modalities
    unknown = [m for m in modalities if m not in model.modalities]
    if unknown:
        raise EncodeError(f"--modalities: the model of {pretrained.path} has {list(model.modalities)}, "
                          f"found {unknown}")
    try:
        data = load_eval_data(pretrained, settings.data, settings.data_preset, settings.data_seed, modalities)
        provenance = data_provenance(pretrained, data)  # the manifest says when it is not the pretraining data
    except PretrainedDataError as exc:
        raise EncodeError(str(exc)) from None
    clips = _clips(data, settings.split)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EncodeError(f"--device {settings.device}: this torch sees no CUDA device")
    check_output(out, read_paths(pretrained, data))  # before anything is written or replaced
    model.to(device)

    outputs = ("indices",) + ("quantized",) * settings.with_quantized + ("rows",) * settings.with_rows
    n, steps = len(clips), data.segments
    widths = {"quantized": (model.config.dim,), "rows": (len(model.modalities) * model.config.dim,)}
    with atomic_output_dir(out, overwrite) as tmp:
        arrays, files = {}, {}

        def array(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
            path = tmp / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays[name] = reserved_memmap(path, dtype, shape)
            files[name] = {"file": f"{name}.npy", "shape": list(shape), "dtype": np.dtype(dtype).name}
            return arrays[name]

        array("clips", (n,), np.int64)[:] = clips
        if data.clip_ids is not None:
            ids = np.asarray(data.clip_ids)[clips]
            np.save(tmp / "clip_ids.npy", ids, allow_pickle=False)
            files["clip_ids"] = {"file": "clip_ids.npy", "shape": [n], "dtype": ids.dtype.str.lstrip("<>|=")}
        for m in modalities:
            array(f"indices/{m}", (n, steps), np.int64)
            for kind in outputs[1:]:
                array(f"{kind}/{m}", (n, steps, *widths[kind]), np.float32)
        if "text" in modalities:
            array("text_mask", (n, steps), np.bool_)

        bar = tqdm(total=n, unit="clip", desc="encode", disable=not progress, dynamic_ncols=True)
        try:
            for start in range(0, n, settings.batch_size):
                batch = clips[start : start + settings.batch_size]
                rows = slice(start, start + len(batch))
                mask = text_mask(data, "text", batch) if "text" in modalities else None
                features = {m: inputs(data, m, batch).to(device) for m in modalities}
                codes = model.encode(features, None if mask is None else mask.to(device))
                for m, found in codes.items():
                    arrays[f"indices/{m}"][rows] = found.indices.cpu().numpy()
                    if "quantized" in outputs:
                        arrays[f"quantized/{m}"][rows] = found.codes.float().cpu().numpy()
                    if "rows" in outputs:
                        arrays[f"rows/{m}"][rows] = found.rows.float().cpu().numpy()
                if mask is not None:
                    arrays["text_mask"][rows] = mask.numpy()
                bar.update(len(batch))
        finally:
            bar.close()
        for mapped in arrays.values():
            mapped.flush()
        arrays.clear()  # close the memory maps before the folder is renamed into place
        manifest = _manifest(pretrained, data, settings, modalities, outputs, n, files)
        manifest["pretraining_data"] = provenance
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _clips(data, split: str | None) -> np.ndarray:
    if split is None:
        return np.arange(data.num_clips, dtype=np.int64)
    if split not in data.splits:
        where = data.root if data.root is not None else "<built-in data set>"
        raise EncodeError(f"--split {split}: data {where} has no such split (it has {sorted(data.splits)})")
    clips = np.asarray(data.splits[split], dtype=np.int64)
    if len(clips) == 0:
        raise EncodeError(f"--split {split}: the split is empty")
    return clips


def _manifest(pretrained: Pretrained, data, settings: EncodeSettings, modalities, outputs, n: int,
              files: dict) -> dict:
    cfg = pretrained.model.config
    source = ({"folder": str(Path(data.root).resolve())} if data.root is not None else
              {"built_in": {k: data.info.get(k) for k in ("preset", "seed")}})
    return {
        "format": FORMAT, "version": VERSION,
        "checkpoint": {"folder": str(Path(pretrained.path).resolve()), "step": pretrained.meta.get("step"),
                       "tensors_sha256": pretrained.tensors_sha256},
        "num_codes": cfg.num_codes, "dim": cfg.dim,
        "model_modalities": list(cfg.modalities), "modalities": list(modalities),
        "segments": data.segments, "clips": n, "split": settings.split,
        "data": {**source, "text_kind": data.text_kind},
        "written": list(outputs),
        "files": files,
        "padded_text": ("text_mask.npy: True at real tokens; padded text steps have codes too (the quantizer "
                        "codes every step), read them with the mask") if "text" in modalities else None,
        "settings": settings.to_dict(),
    }
