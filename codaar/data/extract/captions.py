"""Per-clip captions -> the per-clip text arrays of the data format (the per-clip text contract).

Captions CSV: columns ``clip_id,caption``, any number of rows per clip, clip_id = the media
file's name without its extension (every window of the file shares its captions; a file without a
caption is skipped and reported). Policies for a clip with several captions: ``first`` (the first
row of the clip in file order) or ``each`` (every caption becomes its own clip, id ``<clip>#<k>``,
carrying the same audio/video features).

Each caption is featurized to L = T tokens (BERT on disk or the offline hashed featurizer, with
``max_tokens = T``) by `codaar.data.text.caption_tokens`: ``text_clips`` [L, Dt] float32 and
``text_mask`` [L] bool (True = a real token), the format's per-clip text.
"""

from __future__ import annotations

from ..errors import DataFormatError
from ..text_files import read_csv_rows

CAPTION_POLICIES = ("first", "each")


def read_captions(path) -> dict[str, list[str]]:
    """{clip_id: its captions in file order}."""
    captions: dict[str, list[str]] = {}
    for _, row in read_csv_rows(path, ("clip_id", "caption")):
        captions.setdefault(row["clip_id"], []).append(row["caption"])
    if not captions:
        raise DataFormatError(path, "rows", "at least one caption", "none")
    return captions


def clip_captions(captions: list[str], policy: str) -> list[str]:
    """The captions that become clips (one row each) under ``policy``."""
    if policy not in CAPTION_POLICIES:
        raise ValueError(f"caption policy: expected one of {CAPTION_POLICIES}, got {policy!r}")
    return captions[:1] if policy == "first" else list(captions)
