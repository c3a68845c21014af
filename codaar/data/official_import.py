"""Convert the authors' data layout (docs/method.md §2.4) into the project's format.

Inputs:
* meta CSV ``category,video_id,split`` (e.g. ``vggsound-avel40k.csv``);
* ``<audio-dir>/<video_id>.zip`` and ``<video-dir>/<video_id>.zip``, each holding pickled numpy
  arrays in members whose name contains ``.pkl`` (the last one wins, as in the authors' loaders):
  audio [T', 128], video [T', 7, 7, 512]; T' != 10 is fixed as the authors do (repeat the last
  row / truncate);
* prompts CSV ``label,prompt`` (one prompt per category; text depends only on the class);
* optionally AVE annotations (``Category&VideoID&Quality&StartTime&EndTime``) -> shared
  [10, C+1] labels, and AVVP CSVs (``filename, onset, offset, event_labels``, tab-separated) ->
  per-modality [10, K+1] labels.

Every pickle goes through `SafeArrayUnpickler`. The output folder is built beside OUT and renamed
into place only when everything succeeded, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from codaar.runtime.memmaps import reserved_memmap
from codaar.runtime.outputs import check_output

from .container import BACKGROUND, TriModalData
from .errors import DataFormatError
from .format import atomic_output_dir, load_dataset, write_dataset_files
from .labels import labels_from_events, parse_event_row
from .safe_pickle import load_array
from .text import HashedTextFeaturizer, prompt_table
from .text_files import read_csv_rows, read_text_lines

SEGMENTS = 10
MAX_MEMBER_BYTES = 1 << 30  # a per-clip feature pickle is ~1 MB; refuse zip bombs early
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


# ----------------------------------------------------------------------------------------------
# Reading single files


def read_zipped_array(path) -> np.ndarray:
    """The array in the last ``.pkl`` member of the zip at ``path``, unpickled safely."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFormatError(path, "zip", "a zip archive", f"unreadable ({type(exc).__name__}: {exc})") from None
    with archive:
        members = [m for m in archive.infolist() if ".pkl" in m.filename]
        if not members:
            names = [m.filename for m in archive.infolist()][:5]
            raise DataFormatError(path, "zip members", "a member whose name contains '.pkl'", f"members {names}")
        member = members[-1]  # the authors' loaders overwrite on each .pkl member: the last wins
        if member.file_size > MAX_MEMBER_BYTES:
            raise DataFormatError(path, member.filename, f"at most {MAX_MEMBER_BYTES} bytes",
                                  f"{member.file_size} bytes")
        try:
            payload = archive.read(member)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise DataFormatError(path, member.filename, "a readable zip member",
                                  f"corrupt data ({type(exc).__name__}: {exc})") from None
    return load_array(payload, source=f"{path}!{member.filename}")


def fit_segments(array: np.ndarray, segments: int = SEGMENTS) -> tuple[np.ndarray, str]:
    """Pad by repeating the last row, or truncate, to exactly ``segments`` rows (authors' fix-up).
    Returns the array and "ok" / "padded" / "truncated"."""
    rows = array.shape[0]
    if rows == segments:
        return array, "ok"
    if rows > segments:
        return array[:segments], "truncated"
    padding = np.repeat(array[-1:], segments - rows, axis=0)
    return np.concatenate([array, padding], axis=0), "padded"


def load_clip_features(path, feature_shape: tuple[int, ...], field_name: str, segments: int = SEGMENTS):
    """Read, check and length-fix one clip's features: returns ([segments, *feature_shape], status)."""
    array = read_zipped_array(path)
    source = path
    if array.ndim != 1 + len(feature_shape) or tuple(array.shape[1:]) != tuple(feature_shape):
        expected = "shape [T, " + ", ".join(str(s) for s in feature_shape) + "]"
        raise DataFormatError(source, field_name, expected, f"shape {list(array.shape)}")
    if array.shape[0] == 0:
        raise DataFormatError(source, field_name, "at least one segment", "0 segments")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise DataFormatError(source, field_name, "finite values", f"{array[tuple(bad)]} at index {bad.tolist()}")
    return fit_segments(array, segments)


def read_lines(path) -> list[str]:
    """A class list file: one name per line (blank lines ignored; order = class id)."""
    return [line.strip() for _, line in read_text_lines(path, "class list") if line.strip()]


# ----------------------------------------------------------------------------------------------
# Labels


def read_ave_annotations(path, class_names: list[str], clip_ids: list[str], segments: int = SEGMENTS) -> np.ndarray:
    """AVE ``Annotations.txt`` rows ``Category&VideoID&Quality&StartTime&EndTime`` -> [N, T, C+1]."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "AVE annotations", "a file", "no such file")
    class_index = {name: i for i, name in enumerate(class_names)}
    events: dict[str, list] = {}
    for line_no, line in read_text_lines(path, "AVE annotations"):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("&")]
        if fields[0] == "Category" and line_no == 1:
            continue  # header
        if len(fields) != 5:
            raise DataFormatError(path, f"line {line_no}",
                                  "5 '&'-separated fields (Category&VideoID&Quality&StartTime&EndTime)",
                                  f"{len(fields)} fields")
        category, video_id, _, start, end = fields
        try:
            triple = (int(float(start)), int(float(end)), category)
        except ValueError:
            raise DataFormatError(path, f"line {line_no} StartTime/EndTime", "numbers of seconds",
                                  "values that are not numbers (not shown)") from None
        if category not in class_index:
            raise DataFormatError(path, f"line {line_no} Category", "a category of the meta CSV", repr(category))
        events.setdefault(video_id, []).append(triple)
    unlabeled = [c for c in clip_ids if c not in events]
    if unlabeled:
        raise DataFormatError(path, "VideoID", "a row for every clip of the meta CSV",
                              f"{len(unlabeled)} clips without a row (first: {unlabeled[0]})")
    return np.stack([labels_from_events(events[c], class_index, segments, path, "Category") for c in clip_ids])


def read_avvp_labels(path, classes: list[str], clip_ids: list[str], segments: int = SEGMENTS):
    """AVVP CSV (``filename, onset, offset, event_labels``) -> ([N, T, K+1], labelled clip indices).

    A row belongs to the clip whose id is its filename or the filename's first 11 characters
    (the YouTube id the authors' zips are named by). All rows of a clip are OR-ed together.
    Clips without rows get background-only labels and are left out of the returned indices.
    """
    rows = read_csv_rows(path, ("filename", "onset", "offset", "event_labels"))
    position = {c: i for i, c in enumerate(clip_ids)}
    class_index = {name: i for i, name in enumerate(classes)}
    events: dict[int, list] = {}
    for line, row in rows:
        name = row["filename"]
        clip = position.get(name, position.get(name[:11]))
        if clip is None:
            continue  # a labelled video that is not in this import (e.g. features missing upstream)
        triples = parse_event_row(row["onset"], row["offset"], row["event_labels"], path, line)
        for triple in triples:
            if triple[2] not in class_index:
                raise DataFormatError(path, f"line {line} event_labels",
                                      f"a class of the AVVP class list ({len(classes)})", repr(triple[2]))
        events.setdefault(clip, []).extend(triples)
    labels = np.zeros((len(clip_ids), segments, len(classes) + 1), np.float32)
    labels[..., -1] = 1.0
    for clip, triples in events.items():
        labels[clip] = labels_from_events(triples, class_index, segments, path)
    return labels, np.array(sorted(events), dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# The import


def import_official(meta_csv, audio_dir, video_dir, prompts_csv, out, *, audio_shape=(128,),
                    video_shape=(7, 7, 512), segments: int = SEGMENTS, categories_file=None, text_featurizer=None,
                    ave_annotations=None, avvp_audio_csv=None, avvp_visual_csv=None, avvp_categories=None,
                    skip_missing: bool = False, overwrite: bool = False, progress: bool = True,
                    dtype: str = "float32") -> TriModalData:
    """Convert the authors' layout into a data set folder at ``out``; returns it opened lazily.

    Splits written: ``pretrain`` = every clip (the authors pretrain on train+val+test of
    VGGSound-AVEL), one split per value of the meta ``split`` column, and ``avvp_audio`` /
    ``avvp_video`` = clips that have AVVP rows. ``text_featurizer`` defaults to the offline hashed
    featurizer at BERT's width (768).
    """
    meta_csv, audio_dir, video_dir = Path(meta_csv), Path(audio_dir), Path(video_dir)
    check_output(out, {"--meta": meta_csv, "--audio-dir": audio_dir, "--video-dir": video_dir, "--prompts": prompts_csv,
                       "--categories": categories_file, "--ave-labels": ave_annotations, "--avvp-audio": avvp_audio_csv,
                       "--avvp-visual": avvp_visual_csv, "--avvp-categories": avvp_categories})
    rows = read_csv_rows(meta_csv, ("category", "video_id", "split"))
    if not rows:
        raise DataFormatError(meta_csv, "rows", "at least one clip", "none")
    for directory, name in ((audio_dir, "audio"), (video_dir, "video")):
        if not directory.is_dir():
            raise DataFormatError(directory, f"{name} feature folder", "a folder of <video_id>.zip files",
                                  "no such folder")

    seen: dict[str, int] = {}
    for line, row in rows:
        if row["video_id"] in seen:
            raise DataFormatError(meta_csv, f"line {line} video_id", "unique video ids",
                                  f"{row['video_id']!r} again (first on line {seen[row['video_id']]})")
        seen[row["video_id"]] = line
        if not _SPLIT_NAME.match(row["split"]):
            raise DataFormatError(meta_csv, f"line {line} split", "a name of letters, digits, '_' or '-'",
                                  repr(row["split"]))

    # Missing feature files are found up front, so the output can be allocated at its final size.
    missing = []
    kept = []
    for line, row in rows:
        absent = [d / f"{row['video_id']}.zip" for d in (audio_dir, video_dir)
                  if not (d / f"{row['video_id']}.zip").is_file()]
        if absent and not skip_missing:
            modality = "audio" if absent[0].parent == audio_dir else "video"
            raise DataFormatError(absent[0], f"{modality} features of {row['video_id']} (meta line {line})",
                                  "a zip file", "no such file", hint="pass --skip-missing to leave such clips out")
        (missing if absent else kept).append(row)
    if not kept:
        raise DataFormatError(meta_csv, "rows", "at least one clip with both feature files", "none")

    class_names = read_lines(categories_file) if categories_file else sorted({row["category"] for _, row in rows})
    class_index = {name: i for i, name in enumerate(class_names)}
    for line, row in rows:
        if row["category"] not in class_index:
            raise DataFormatError(categories_file or meta_csv, f"category of meta line {line}",
                                  "a class of the category list", repr(row["category"]))
    prompt_of = {row["label"]: row["prompt"] for _, row in read_csv_rows(prompts_csv, ("label", "prompt"))}
    absent_prompts = [c for c in class_names if c not in prompt_of]
    if absent_prompts:
        raise DataFormatError(prompts_csv, "prompt", f"a prompt for each of the {len(class_names)} classes",
                              f"none for {absent_prompts[:3]}" + (" ..." if len(absent_prompts) > 3 else ""))
    prompts = [prompt_of[c] for c in class_names]
    featurizer = text_featurizer or HashedTextFeaturizer(dim=768, max_tokens=10)
    text = prompt_table(prompts, featurizer)

    clip_ids = [row["video_id"] for row in kept]
    category = np.array([class_index[row["category"]] for row in kept], dtype=np.int64)
    splits = {"pretrain": np.arange(len(kept), dtype=np.int64)}
    for name in dict.fromkeys(row["split"] for row in kept):
        splits[name] = np.array([i for i, row in enumerate(kept) if row["split"] == name], dtype=np.int64)

    labels, label_classes = {}, {}
    if ave_annotations is not None:
        labels["segment"] = read_ave_annotations(ave_annotations, class_names, clip_ids, segments)
        label_classes["segment"] = class_names + [BACKGROUND]
    if avvp_audio_csv is not None or avvp_visual_csv is not None:
        if avvp_categories is None:
            raise ValueError("AVVP labels need the AVVP class list (AVVP_Categories.txt, --avvp-categories)")
        avvp_classes = read_lines(avvp_categories)
        for modality, path in (("audio", avvp_audio_csv), ("video", avvp_visual_csv)):
            if path is not None:
                labels[modality], splits[f"avvp_{modality}"] = read_avvp_labels(path, avvp_classes, clip_ids, segments)
                label_classes[modality] = avvp_classes + [BACKGROUND]

    counts = {"audio": {"ok": 0, "padded": 0, "truncated": 0}, "video": {"ok": 0, "padded": 0, "truncated": 0}}
    n = len(kept)
    with atomic_output_dir(out, overwrite) as tmp:
        audio = reserved_memmap(tmp / "audio.npy", dtype, (n, segments) + tuple(audio_shape))
        video = reserved_memmap(tmp / "video.npy", dtype, (n, segments) + tuple(video_shape))
        clips = enumerate(kept)
        if progress:
            from tqdm import tqdm

            clips = tqdm(clips, total=n, unit="clip", desc="import")
        for i, row in clips:
            for modality, directory, shape, target in (("audio", audio_dir, audio_shape, audio),
                                                      ("video", video_dir, video_shape, video)):
                features, status = load_clip_features(directory / f"{row['video_id']}.zip", shape, modality, segments)
                target[i] = features
                counts[modality][status] += 1
        audio.flush()
        video.flush()
        info = {"source": "official-import", "meta_csv": meta_csv.name, "prompts_csv": Path(prompts_csv).name,
                "segment_fix": counts, "skipped_missing": [row["video_id"] for row in missing],
                "text_featurizer": featurizer.describe(),
                "splits_note": "pretrain = all clips (the authors pretrain on train+val+test)"}
        data = TriModalData(audio=audio, video=video, text_table=text, category=category, class_names=class_names,
                            prompts=prompts, splits=splits, labels=labels, label_classes=label_classes,
                            clip_ids=np.array(clip_ids), info=info)
        write_dataset_files(data, tmp, already_written=frozenset({"audio", "video"}))
        del audio, video, data
    return load_dataset(Path(out), check_finite=False)
