"""`TriModalData`: the in-memory (or memory-mapped) form of a data set, and its checks.

One object serves both the built-in synthetic set (plain arrays) and a folder on disk
(read-only ``np.memmap`` arrays), so the trainer and the evaluator never care where the
data came from.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataFormatError

MODALITIES = ("audio", "video", "text")
FEATURE_DTYPES = ("float16", "float32", "float64")
BACKGROUND = "background"
# Rows scanned at once by the NaN/Inf check: bounds memory when the arrays are memory-mapped.
_FINITE_SCAN_BYTES = 64 << 20


@dataclass
class TriModalData:
    """Per-clip features of the three modalities plus everything needed to use them.

    Shapes (N clips, T segments, C classes):
      audio      [N, T, Da]                      per-second audio features (VGGish: Da=128)
      video      [N, T, *Sv]                     per-second video features ((64,) built-in, (7, 7, 512) VGG19)
      text_table [C, L, Dt] or None              token embeddings of each class prompt; the text of
                                                 clip i is ``text_table[category[i]]`` (prompts depend
                                                 only on the class, so the table is computed once)
      clip_text  [N, L, Dt] or None              per-clip text instead (each clip's own caption), L = T:
                                                 the model reads the L tokens as its T text steps
      clip_text_mask [N, L] bool or None         True = real token, False = padding (after the real ones)
      category   [N] int64                       class index of each clip (the prompt to use)
      labels     name -> [N, T, K+1] float32     per-segment multi-hot labels, background column last;
                                                 "segment" is shared by all modalities (AVE-like),
                                                 "audio"/"video" are per-modality (AVVP-like)
      splits     name -> int64 clip indices      e.g. pretrain / train / val / test
    """

    audio: np.ndarray
    video: np.ndarray
    text_table: np.ndarray | None
    category: np.ndarray
    class_names: list[str]
    prompts: list[str]
    splits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_classes: dict[str, list[str]] = field(default_factory=dict)
    clip_ids: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    root: Path | None = None  # the folder it was loaded from; None when built in memory
    # Per-clip text (captions): both set or both None, and never together with `text_table`.
    clip_text: np.ndarray | None = None
    clip_text_mask: np.ndarray | None = None
    clip_captions: list[str] | None = None  # the caption each clip's text came from (for inspection)

    @property
    def num_clips(self) -> int:
        return int(self.audio.shape[0])

    @property
    def segments(self) -> int:
        return int(self.audio.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def text_kind(self) -> str | None:
        """"per-clip" (each clip its own caption), "class-prompt" (one prompt per class) or None (no text)."""
        if self.clip_text is not None:
            return "per-clip"
        return "class-prompt" if self.text_table is not None else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("audio", "video") + (("text",) if self.text_kind is not None else ())

    def _text_source(self) -> np.ndarray:
        if self.text_kind is None:
            raise KeyError("this data set has no text modality")
        return self.clip_text if self.clip_text is not None else self.text_table

    def feature_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one time step of ``modality`` (text: one token)."""
        if modality == "text":
            return tuple(self._text_source().shape[2:])
        return tuple(self.modality(modality).shape[2:])

    def modality(self, name: str) -> np.ndarray:
        if name == "audio":
            return self.audio
        if name == "video":
            return self.video
        raise KeyError(f"per-clip array for modality {name!r} does not exist; use text(indices) for text")

    def text(self, indices) -> np.ndarray:
        """Token embeddings [len(indices), L, Dt] of the given clips (their own text, or their class's prompt)."""
        source = self._text_source()
        if self.clip_text is not None:
            return np.asarray(source[np.asarray(indices)])
        return source[np.asarray(self.category[indices])]

    def text_mask(self, indices) -> np.ndarray:
        """Real-token mask [len(indices), L] bool of the given clips (all True for class prompts)."""
        source = self._text_source()
        if self.clip_text_mask is not None:
            return np.asarray(self.clip_text_mask[np.asarray(indices)], dtype=bool)
        return np.ones(np.shape(indices) + (source.shape[1],), dtype=bool)

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; available: {sorted(self.splits)}")
        return self.splits[name]

    def segment_labels(self, modality: str | None = None) -> np.ndarray:
        """Labels [N, T, K+1] for ``modality``: its own AVVP-style set if present, else the shared one."""
        if modality is not None and modality in self.labels:
            return self.labels[modality]
        if "segment" in self.labels:
            return self.labels["segment"]
        raise KeyError(f"no labels for modality {modality!r}; available: {sorted(self.labels)}")

    def summary(self) -> str:
        lines = [
            f"clips: {self.num_clips}, segments: {self.segments}, classes: {self.num_classes}",
            f"audio: {tuple(self.audio.shape)} {self.audio.dtype}",
            f"video: {tuple(self.video.shape)} {self.video.dtype}",
        ]
        if self.text_table is not None:
            lines.append(f"text table: {tuple(self.text_table.shape)} {self.text_table.dtype}")
        if self.clip_text is not None:
            line = f"text per clip: {tuple(self.clip_text.shape)} {self.clip_text.dtype}"
            tokens = np.asarray(self.clip_text_mask).sum(axis=1)
            if tokens.size:
                line += f", real tokens per clip {tokens.mean():.1f} (min {tokens.min()}, max {tokens.max()})"
            lines.append(line)
        for name, arr in self.labels.items():
            lines.append(f"labels[{name}]: {tuple(arr.shape)} ({len(self.label_classes.get(name, []))} columns)")
        lines.append("splits: " + ", ".join(f"{k}={len(v)}" for k, v in self.splits.items()))
        return "\n".join(lines)


def video_level_class(labels: np.ndarray) -> np.ndarray:
    """AVE clip class as the authors compute it (docs/method.md §2.5): per segment the arg-max over the
    foreground columns (0 when the segment has none), then the maximum over time.

    labels: [..., T, K+1] with background last. Returns int64 [...].
    """
    foreground = np.asarray(labels)[..., :-1]
    per_segment = np.where(foreground.max(axis=-1) > 0, foreground.argmax(axis=-1), 0)
    return per_segment.max(axis=-1).astype(np.int64)


def check_finite(array: np.ndarray, file, field_name: str) -> None:
    """Scan ``array`` (possibly memory-mapped, larger than RAM) for NaN/Inf, _FINITE_SCAN_BYTES at a time."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    for start, chunk in _row_chunks(array, max(1, _FINITE_SCAN_BYTES // max(1, array[:1].nbytes))):
        if not np.isfinite(chunk).all():
            bad = np.argwhere(~np.isfinite(chunk))[0]
            value = chunk[tuple(bad)]
            where = (start + int(bad[0]),) + tuple(int(i) for i in bad[1:])
            raise DataFormatError(file, field_name, "finite values", f"{value} at index {list(where)}")


def _row_chunks(array: np.ndarray, rows: int):
    """(first row, rows of ``array``) ``rows`` at a time. A memory-mapped ``.npy`` is read from its file
    into one reused buffer: the pages of a map would stay resident until it is closed, so scanning
    through the map would end with the whole array in the process's memory."""
    mapped = isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename is not None
    if not (mapped and array.flags.c_contiguous):
        for start in range(0, array.shape[0], rows):
            yield start, np.asarray(array[start : start + rows])
        return
    row_shape, row_bytes = array.shape[1:], array[:1].nbytes
    buffer = bytearray(rows * row_bytes)
    with open(array.filename, "rb") as fh:
        fh.seek(array.offset)
        for start in range(0, array.shape[0], rows):
            count = min(rows, array.shape[0] - start)
            view = memoryview(buffer)[: count * row_bytes]
            if fh.readinto(view) != len(view):
                raise DataFormatError(array.filename, "data", f"{array.shape[0]} rows", "a file cut short while read")
            yield start, np.frombuffer(view, dtype=array.dtype).reshape((count,) + row_shape)


def validate(data: TriModalData, files: dict[str, object] | None = None, finite: bool = True) -> None:
    """Check that every array of ``data`` has the shape, dtype and range the rest implies.

    ``files`` maps field names ("audio", "labels.segment", "splits.train", ...) to the file they
    came from, so errors name the file; fields without a file are reported as in memory.
    """
    files = files or {}

    def where(name):
        return files.get(name, "<in memory>")

    def expect_features(name, arr, min_ndim):
        if not isinstance(arr, np.ndarray):
            raise DataFormatError(where(name), name, "a numpy array", type(arr).__name__)
        if arr.dtype.name not in FEATURE_DTYPES:
            raise DataFormatError(where(name), name, f"dtype in {FEATURE_DTYPES}", f"dtype {arr.dtype}")
        if arr.ndim < min_ndim:
            raise DataFormatError(where(name), name, f"at least {min_ndim} dimensions", f"shape {tuple(arr.shape)}")

    expect_features("audio", data.audio, 3)
    if data.audio.ndim != 3:
        raise DataFormatError(where("audio"), "audio", "shape [clips, segments, features]",
                              f"shape {tuple(data.audio.shape)}")
    expect_features("video", data.video, 3)
    n, t = data.audio.shape[:2]
    if data.video.shape[0] != n:
        raise DataFormatError(where("video"), "video", f"{n} clips (as in audio)", f"{data.video.shape[0]} clips")
    if data.video.shape[1] != t:
        raise DataFormatError(where("video"), "video", f"{t} segments per clip (as in audio)", f"{data.video.shape[1]}")

    c = len(data.class_names)
    if c == 0:
        raise DataFormatError(where("manifest"), "class_names", "at least one class", "none")
    if len(set(data.class_names)) != c:
        raise DataFormatError(where("manifest"), "class_names", "unique names", "duplicates")
    validate_clip_text(data, n, t, where)
    # Per-clip text needs no class prompts (captioned data has none); otherwise one per class.
    if len(data.prompts) != c and not (data.clip_text is not None and len(data.prompts) == 0):
        raise DataFormatError(where("manifest"), "prompts", f"{c} prompts (one per class)", f"{len(data.prompts)}")
    if data.text_table is not None:
        expect_features("text", data.text_table, 3)
        if data.text_table.ndim != 3 or data.text_table.shape[0] != c:
            raise DataFormatError(
                where("text"), "text", f"shape [{c} classes, tokens, features]", f"shape {tuple(data.text_table.shape)}"
            )

    category = data.category
    if not isinstance(category, np.ndarray) or category.dtype.kind not in "iu" or category.shape != (n,):
        found = f"shape {getattr(category, 'shape', None)} dtype {getattr(category, 'dtype', type(category).__name__)}"
        raise DataFormatError(where("category"), "category", f"integer array of shape ({n},)", found)
    if n and (category.min() < 0 or category.max() >= c):
        raise DataFormatError(
            where("category"), "category", f"class indices in [0, {c})", f"range [{category.min()}, {category.max()}]"
        )

    if data.clip_ids is not None and len(data.clip_ids) != n:
        raise DataFormatError(where("clip_ids"), "clip_ids", f"{n} ids", f"{len(data.clip_ids)}")

    for name, arr in data.labels.items():
        key = f"labels.{name}"
        columns = data.label_classes.get(name)
        if columns is None:
            raise DataFormatError(where("manifest"), f"label_classes.{name}", "column names for the label set", "none")
        if not isinstance(arr, np.ndarray) or arr.shape != (n, t, len(columns)):
            found = f"shape {tuple(getattr(arr, 'shape', ()))}"
            raise DataFormatError(where(key), key,
                                  f"shape ({n}, {t}, {len(columns)}) [clips, segments, classes+background]", found)
        if n and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise DataFormatError(where(key), key, "values in [0, 1]", f"range [{np.nanmin(arr)}, {np.nanmax(arr)}]")

    for name, idx in data.splits.items():
        key = f"splits.{name}"
        if not isinstance(idx, np.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise DataFormatError(where(key), key, "1-D integer clip indices",
                                  f"{getattr(idx, 'dtype', type(idx).__name__)} {getattr(idx, 'shape', '')}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataFormatError(where(key), key, f"clip indices in [0, {n})", f"range [{idx.min()}, {idx.max()}]")

    if finite:
        check_finite(data.audio, where("audio"), "audio")
        check_finite(data.video, where("video"), "video")
        if data.text_table is not None:
            check_finite(data.text_table, where("text"), "text")
        if data.clip_text is not None:
            check_finite(data.clip_text, where("text_clips"), "text_clips")
        for name, arr in data.labels.items():
            check_finite(arr, where(f"labels.{name}"), f"labels.{name}")


def validate_clip_text(data: TriModalData, n: int, t: int, where) -> None:
    """Per-clip text: [N, T, Dt] features with a [N, T] bool mask whose real tokens come first, at
    least one per clip (an all-padding row would leave the text encoder nothing to read)."""
    text, mask = data.clip_text, data.clip_text_mask
    if text is None and mask is None:
        if data.clip_captions is not None:
            raise DataFormatError(where("captions"), "captions", "per-clip text beside the captions", "no text_clips")
        return
    if text is None or mask is None:
        given, missing = ("text_clips", "text_mask") if mask is None else ("text_mask", "text_clips")
        raise DataFormatError(where(missing), missing, "both text_clips and text_mask (per-clip text)",
                              f"{given} without {missing}")
    if data.text_table is not None:
        raise DataFormatError(where("text_clips"), "text_clips", "either per-clip text or a class-prompt table",
                              "both (text.npy and text_clips.npy)")
    if not isinstance(text, np.ndarray):
        raise DataFormatError(where("text_clips"), "text_clips", "a numpy array", type(text).__name__)
    if text.dtype.name not in FEATURE_DTYPES:
        raise DataFormatError(where("text_clips"), "text_clips", f"dtype in {FEATURE_DTYPES}", f"dtype {text.dtype}")
    if text.ndim != 3 or text.shape[:2] != (n, t):
        raise DataFormatError(where("text_clips"), "text_clips",
                              f"shape ({n}, {t}, features) [clips, tokens = segments, features]",
                              f"shape {tuple(text.shape)}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n, t):
        found = f"shape {tuple(getattr(mask, 'shape', ()))} dtype {getattr(mask, 'dtype', type(mask).__name__)}"
        raise DataFormatError(where("text_mask"), "text_mask", f"bool array of shape ({n}, {t}) [clips, tokens]", found)
    mask = np.asarray(mask)
    if n:
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise DataFormatError(where("text_mask"), "text_mask", "at least one real token per clip",
                                  f"{empty.size} clips without any (first: clip {empty[0]})")
        after_padding = np.flatnonzero((mask[:, 1:] & ~mask[:, :-1]).any(axis=1))
        if after_padding.size:
            raise DataFormatError(where("text_mask"), "text_mask", "real tokens first, then padding",
                                  f"a real token after padding in {after_padding.size} clips "
                                  f"(first: clip {after_padding[0]})")
    if data.clip_captions is not None:
        captions = data.clip_captions
        if not isinstance(captions, list) or len(captions) != n or not all(isinstance(c, str) for c in captions):
            found = (f"{len(captions)} entries" if isinstance(captions, list) and len(captions) != n
                     else "non-string entries" if isinstance(captions, list) else type(captions).__name__)
            raise DataFormatError(where("captions"), "captions", f"a list of {n} strings (one per clip)", found)
