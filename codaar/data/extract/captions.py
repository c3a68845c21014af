"""Per-clip captions -> the per-clip text arrays of the data format (the per-clip text contract).

Captions CSV: columns ``clip_id,caption``, any number of rows per clip, clip_id = the media
file's name without its extension (every window of the file shares its captions; a file without a caption is skipped and reported). Policies for a
clip with several captions: ``first`` (the first row of the clip in file order) or ``each``
(every caption becomes its own clip, id ``<clip>#<k>``, carrying the same audio/video features).

Each caption is featurized to L = T tokens (BERT on disk or the offline hashed featurizer, with
``max_tokens = T``): ``text_clips`` [L, Dt] float32 and ``text_mask`` [L] bool (True = a real token).
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from ..container import TriModalData
from ..errors import DataFormatError
from ..format import MANIFEST, _array_entry, write_dataset_files
from ..official_import import _read_csv

CAPTION_POLICIES = ("first", "each")


def read_captions(path) -> dict[str, list[str]]:
    """{clip_id: its captions in file order}."""
    captions: dict[str, list[str]] = {}
    for _, row in _read_csv(path, ("clip_id", "caption")):
        captions.setdefault(row["clip_id"], []).append(row["caption"])
    if not captions:
        raise DataFormatError(path, "rows", "at least one caption", "none")
    return captions


def clip_captions(captions: list[str], policy: str) -> list[str]:
    """The captions that become clips (one row each) under ``policy``."""
    if policy not in CAPTION_POLICIES:
        raise ValueError(f"caption policy: expected one of {CAPTION_POLICIES}, got {policy!r}")
    return captions[:1] if policy == "first" else list(captions)


def caption_tokens(featurizer, caption: str) -> tuple[np.ndarray, np.ndarray]:
    """([L, Dt] float32 token embeddings, [L] bool mask) of one caption.

    Both featurizers zero-fill the rows after the caption's last token and never produce an
    all-zero row for a real token (a hashed word vector or a BERT hidden state), so the mask is
    read from the rows themselves and works for any featurizer with that contract.
    """
    tokens = np.asarray(featurizer(caption), dtype=np.float32)
    return tokens, np.any(tokens != 0, axis=-1)


def per_clip_text_supported() -> bool:
    """Whether this codaar's data format reads per-clip text (the per-clip text contract)."""
    return "clip_text" in {f.name for f in fields(TriModalData)}


def write_per_clip_text(data: TriModalData, folder: Path, text_clips, text_mask, captions: list[str],
                        already_written: frozenset[str]) -> dict:
    """Write ``data`` with per-clip text (already in ``folder`` as text_clips.npy / text_mask.npy).

    Uses the format's own support when `TriModalData` has the per-clip fields of the per-clip text
    contract; until then, writes the schema-1 folder and adds the contract's entries (arrays
    ``text_clips``/``text_mask``, ``text_kind``, schema version 2, ``captions.json``) itself.
    """
    if per_clip_text_supported():
        data = replace(data, clip_text=text_clips, clip_text_mask=text_mask, clip_captions=captions)
        return write_dataset_files(data, folder, already_written=already_written | {"text_clips", "text_mask"})
    manifest = write_dataset_files(data, folder, already_written=already_written)
    manifest["schema_version"] = 2
    manifest["modalities"] = list(data.modalities) + ["text"]
    manifest["text_kind"] = "per-clip"
    manifest["arrays"]["text_clips"] = _array_entry("text_clips.npy", text_clips)
    manifest["arrays"]["text_mask"] = _array_entry("text_mask.npy", text_mask)
    (folder / "captions.json").write_text(json.dumps(captions, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return manifest
