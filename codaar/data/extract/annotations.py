"""Optional labels of raw videos: classes, AVE-style segment labels and train/val/test splits.

Labels CSV: columns ``clip_id,class`` (clip_id = the media file's name without its extension),
optional ``start,end`` (the event's whole seconds in the file; absent = the whole clip) and
``split``; a file without a row is skipped and reported. Several rows per clip are several events
(OR-ed, as AVVP does); the clip's category is the class of its first row. Per window the events
are shifted to the window's start and turned into [T, C+1] labels (background last) by
`labels_from_events`.

Splits: the ``split`` column when present, else a seeded shuffle of the extracted files cut by
``--splits train,val,test`` fractions (every non-zero fraction gets at least one file). All
windows and caption copies of a file land in the same split, so nothing leaks across splits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFormatError
from ..labels import labels_from_events
from ..text_files import read_csv_rows

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class ClipAnnotation:
    events: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, class); end may be inf
    split: str | None = None


def _seconds(text: str, path, line: int, column: str, default: float) -> float:
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(path, f"line {line} column {column}", "a number of seconds",
                              "a value that is not a number (not shown)") from None
    if not math.isfinite(value) or value < 0:
        raise DataFormatError(path, f"line {line} column {column}", "a non-negative number of seconds", repr(value))
    return value


def read_labels(path) -> tuple[list[str], dict[str, ClipAnnotation]]:
    """(class names sorted, {clip_id: annotation})."""
    path = Path(path)
    annotations: dict[str, ClipAnnotation] = {}
    for line, row in read_csv_rows(path, ("clip_id", "class")):
        clip = annotations.setdefault(row["clip_id"], ClipAnnotation())
        start = _seconds(row.get("start", ""), path, line, "start", 0.0)
        end = _seconds(row.get("end", ""), path, line, "end", math.inf)
        if end <= start:
            raise DataFormatError(path, f"line {line} start/end", "end > start", f"{start}, {end}")
        clip.events.append((start, end, row["class"]))
        split = row.get("split", "")
        if split:
            if not _SPLIT_NAME.match(split):
                raise DataFormatError(path, f"line {line} column split", "a name of letters, digits, '_' or '-'",
                                      repr(split))
            if clip.split not in (None, split):
                raise DataFormatError(path, f"line {line} column split",
                                      f"{clip.split!r} (as on the clip's earlier rows)", repr(split))
            clip.split = split
    if not annotations:
        raise DataFormatError(path, "rows", "at least one labelled clip", "none")
    classes = sorted({name for clip in annotations.values() for _, _, name in clip.events})
    return classes, annotations


def window_labels(annotation: ClipAnnotation, window_start: int, segments: int,
                  class_index: dict[str, int]) -> np.ndarray:
    """[T, C+1] labels of the window of T seconds starting at ``window_start`` of the file."""
    events = [(max(0.0, start - window_start), min(float(segments), end - window_start), name)
              for start, end, name in annotation.events]
    return labels_from_events(events, class_index, segments)


def assign_splits(files: list[str], annotations: dict[str, ClipAnnotation], fractions, seed: int) -> dict[str, str]:
    """{file clip_id: split name} for the extracted files."""
    if any(annotations[f].split is not None for f in files):
        unassigned = [f for f in files if annotations[f].split is None]
        if unassigned:
            raise ValueError(f"labels: the 'split' column is empty for {len(unassigned)} extracted clips "
                             f"(first: {unassigned[:3]}); give it for every clip or for none")
        return {f: annotations[f].split for f in files}
    order = np.random.default_rng(seed).permutation(len(files))
    shuffled = [sorted(files)[i] for i in order]
    n = len(files)
    counts = {name: (max(1, round(n * frac)) if frac > 0 else 0) for name, frac in zip(SPLIT_NAMES[1:], fractions[1:])}
    if n - sum(counts.values()) < 1:
        raise ValueError(f"--splits {','.join(map(str, fractions))}: {n} extracted files are too few for a "
                         "non-empty train split and the requested val/test splits")
    split_of, position = {}, 0
    for name in ("test", "val"):
        for f in shuffled[position:position + counts[name]]:
            split_of[f] = name
        position += counts[name]
    for f in shuffled[position:]:
        split_of[f] = "train"
    return split_of
