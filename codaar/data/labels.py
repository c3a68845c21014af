"""Per-segment label tensors as the authors build them (docs/method.md §2.5).

All label tensors are float32 [T, K+1] with the background column last.
"""

from __future__ import annotations

import numpy as np

from .errors import DataFormatError

SEGMENTS = 10


def labels_from_events(events, class_index: dict[str, int], segments: int = SEGMENTS, source="<in memory>",
                       field_name: str = "event_labels") -> np.ndarray:
    """Build [T, K+1] labels from (onset, offset, class name) triples.

    As in the authors' AVVP loader: the background column starts at 1; for each triple the class
    column is OR-ed to 1 on segments [onset, offset) and background AND-ed with "no event".
    Onsets/offsets are whole seconds (clipped to [0, T]). AVE labels are the same construction
    with one event (StartTime, EndTime, Category) per clip.
    """
    k = len(class_index)
    labels = np.zeros((segments, k + 1), np.float32)
    labels[:, k] = 1.0
    for onset, offset, name in events:
        if name not in class_index:
            raise DataFormatError(source, field_name, f"a class among {len(class_index)} known classes", repr(name))
        start, stop = max(0, int(onset)), min(segments, int(offset))
        if start >= stop:
            continue
        labels[start:stop, class_index[name]] = 1.0
        labels[start:stop, k] = 0.0
    return labels


def parse_event_row(onset: str, offset: str, event_labels: str, source, line: int):
    """Split one AVVP CSV row into triples. "combined" files join several events per row with
    commas, aligned element by element (onset "8,0", offset "10,8", labels "Blender,Speech")."""
    onsets, offsets, names = (s.split(",") for s in (onset, offset, event_labels))
    if not len(onsets) == len(offsets) == len(names):
        raise DataFormatError(source, f"line {line}", "as many onsets, offsets and labels",
                              f"{len(onsets)} onsets, {len(offsets)} offsets, {len(names)} labels")
    triples = []
    for a, b, name in zip(onsets, offsets, names):
        try:
            start, stop = int(float(a)), int(float(b))
        except ValueError:
            raise DataFormatError(source, f"line {line} onset/offset", "numbers of seconds",
                                  "values that are not numbers (not shown)") from None
        triples.append((start, stop, name.strip()))
    return triples
