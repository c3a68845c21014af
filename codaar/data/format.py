"""The project's on-disk format: one ``.npy`` per array plus a JSON manifest.

Layout of a data set folder (schema version 2)::

    manifest.json            format, schema_version, shapes, dtypes, class names, prompts, text_kind, provenance
    audio.npy                [N, T, Da]
    video.npy                [N, T, *Sv]
    text.npy                 [C, L, Dt]   (optional; one row per class prompt)          text_kind "class-prompt"
    text_clips.npy           [N, T, Dt]   (optional; each clip's own caption, L = T)   text_kind "per-clip"
    text_mask.npy            [N, T] bool  (with text_clips; True = real token, padding last)
    captions.json            N strings    (optional, with text_clips; the captions, for inspection)
    category.npy             [N] int64
    clip_ids.npy             [N] unicode
    labels_<name>.npy        [N, T, K+1]  (optional; "segment", "audio", "video")
    splits/<name>.npy        int64 clip indices

Version 2 added per-clip text (``text_clips``, ``text_mask``, ``captions.json``) and the manifest's
``text_kind``; version-1 folders (class prompts or no text) load unchanged.

Why this format: ``.npy`` opens memory-mapped with ``allow_pickle=False`` (no code runs on
load, data larger than RAM works), and numpy alone can read it. Writers build the folder
next to its destination and rename it into place, so a crash never leaves half a data set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from codaar.runtime.publish import atomic_output_dir  # the writers of data sets publish through it

from .container import TriModalData, validate
from .errors import DataFormatError

FORMAT_NAME = "codaar-data"
SCHEMA_VERSION = 2  # the version written
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
CAPTIONS = "captions.json"
TEXT_KINDS = ("class-prompt", "per-clip")


# ----------------------------------------------------------------------------------------------
# Writing


def _dtype_label(dtype: np.dtype) -> str:
    # Strings keep their width ("U11"); numbers use the portable name ("float32").
    return dtype.str.lstrip("<>|=") if dtype.kind in "US" else dtype.name


def _array_entry(filename: str, array: np.ndarray) -> dict:
    return {"file": filename, "shape": [int(s) for s in array.shape], "dtype": _dtype_label(array.dtype)}


def write_dataset_files(data: TriModalData, folder, already_written: frozenset[str] = frozenset()) -> dict:
    """Write ``data`` into the existing ``folder`` (no atomicity; see `write_dataset`).

    Arrays named in ``already_written`` ("audio", "video", "text_clips", "text_mask") are assumed to
    be memory-mapped files already in place at their standard names (streaming writers fill them
    block by block).
    Returns the manifest written.
    """
    folder = Path(folder)
    validate(data, finite=True)
    arrays: dict[str, dict] = {}

    def put(field, filename, array):
        array = np.asarray(array)
        if field not in already_written:
            path = folder / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        arrays[field] = _array_entry(filename, array)

    put("audio", "audio.npy", data.audio)
    put("video", "video.npy", data.video)
    if data.text_table is not None:
        put("text", "text.npy", data.text_table)
    if data.clip_text is not None:
        put("text_clips", "text_clips.npy", data.clip_text)
        put("text_mask", "text_mask.npy", data.clip_text_mask)
        if data.clip_captions is not None:
            (folder / CAPTIONS).write_text(json.dumps(list(data.clip_captions), indent=0) + "\n", encoding="utf-8")
    put("category", "category.npy", data.category.astype(np.int64, copy=False))
    if data.clip_ids is not None:
        put("clip_ids", "clip_ids.npy", np.asarray(data.clip_ids, dtype=str))
    labels = {}
    for name, arr in data.labels.items():
        put(f"labels.{name}", f"labels_{name}.npy", arr)
        labels[name] = dict(arrays.pop(f"labels.{name}"), classes=list(data.label_classes[name]))
    splits = {}
    for name, idx in data.splits.items():
        put(f"splits.{name}", f"splits/{name}.npy", np.asarray(idx, dtype=np.int64))
        splits[name] = arrays.pop(f"splits.{name}")

    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "num_clips": data.num_clips,
        "segments": data.segments,
        "modalities": list(data.modalities),
        "text_kind": data.text_kind,
        "class_names": list(data.class_names),
        "prompts": list(data.prompts),
        "arrays": arrays,
        "labels": labels,
        "splits": splits,
        "info": data.info,
    }
    # No timestamps: the same data must give byte-identical folders (tested).
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return manifest


def write_dataset(data: TriModalData, out, overwrite: bool = False) -> Path:
    """Write ``data`` as a data set folder at ``out`` atomically. Returns ``out`` as a Path."""
    with atomic_output_dir(out, overwrite) as tmp:
        write_dataset_files(data, tmp)
    return Path(out)


# ----------------------------------------------------------------------------------------------
# Reading


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not root.is_dir():
        raise DataFormatError(root, "data set folder", "a folder holding manifest.json", "no such folder")
    if not path.is_file():
        raise DataFormatError(path, MANIFEST, "a JSON manifest written by codaar.data", "no such file")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(path, MANIFEST, "valid UTF-8 JSON", f"unreadable JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataFormatError(path, MANIFEST, "a JSON object", type(manifest).__name__)
    if manifest.get("format") != FORMAT_NAME:
        raise DataFormatError(path, "format", repr(FORMAT_NAME), repr(manifest.get("format")))
    if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise DataFormatError(
            path, "schema_version",
            f"{' or '.join(map(str, READABLE_SCHEMA_VERSIONS))} (the versions this codaar reads)",
            repr(manifest.get("schema_version")),
            hint="unknown schema version; convert the data with a matching codaar",
        )
    required = {"num_clips": int, "segments": int, "class_names": list, "prompts": list, "arrays": dict,
                "splits": dict}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            found = "missing" if key not in manifest else type(manifest[key]).__name__
            raise DataFormatError(path, key, f"a JSON {kind.__name__}", found)
    for key in ("audio", "video", "category"):
        if key not in manifest["arrays"]:
            raise DataFormatError(path, f"arrays.{key}", f"an entry for the {key} array", "missing",
                                  hint="missing modality" if key != "category" else None)
    if manifest["schema_version"] >= 2:
        kind = manifest.get("text_kind")
        if kind is not None and kind not in TEXT_KINDS:
            raise DataFormatError(path, "text_kind", f"one of {list(TEXT_KINDS)} or null", repr(kind))
        needed = {"class-prompt": ("text",), "per-clip": ("text_clips", "text_mask"), None: ()}[kind]
        for key in needed:
            if key not in manifest["arrays"]:
                raise DataFormatError(path, f"arrays.{key}", f"an entry for the {key} array (text_kind {kind!r})",
                                      "missing", hint="missing modality")
    return manifest


def open_npy(path: Path, field_name: str, entry: dict | None = None, mmap: bool = True) -> np.ndarray:
    """Open one ``.npy`` (memory-mapped by default, never unpickling) after checking that its
    header parses, that the file holds all the bytes the header promises, and that shape and
    dtype agree with the manifest ``entry``.
    """
    if not path.is_file():
        raise DataFormatError(path, field_name, "an .npy file", "no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except Exception as exc:  # numpy's parser raises many kinds (ValueError, SyntaxError, TokenError), quoting
        # the bytes it found: not shown
        reason = exc.strerror if isinstance(exc, OSError) else "the file ends inside it" if isinstance(
            exc, EOFError) else "not a .npy file, or a damaged header"
        raise DataFormatError(path, field_name, "a valid .npy header", f"unreadable header ({reason})") from None
    if dtype.hasobject:
        raise DataFormatError(path, field_name, "a numeric or fixed-width string dtype",
                              f"dtype {dtype} (object arrays need pickle and are refused)")
    needed = offset + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise DataFormatError(path, field_name, f"{needed} bytes for shape {tuple(shape)} {dtype}",
                              f"{size} bytes (truncated file)")
    if entry is not None:
        if [int(s) for s in shape] != list(entry.get("shape", [])):
            raise DataFormatError(path, field_name, f"shape {tuple(entry.get('shape', []))} (from the manifest)",
                                  f"shape {tuple(shape)}")
        if entry.get("dtype") != _dtype_label(dtype):
            raise DataFormatError(path, field_name, f"dtype {entry.get('dtype')} (from the manifest)",
                                  f"dtype {dtype}")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)  # np.memmap cannot map zero bytes
    if mmap:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return np.load(path, allow_pickle=False)


def load_dataset(root, mmap: bool = True, check_finite: bool = True) -> TriModalData:
    """Open a data set folder. Arrays are read-only memory maps unless ``mmap=False``.

    ``check_finite`` scans the features for NaN/Inf in bounded chunks (a sequential read of the
    whole folder); turn it off for repeated opens of a folder already checked.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    manifest_path = root / MANIFEST
    files: dict[str, object] = {"manifest": manifest_path}

    def open_entry(field_name, entry):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataFormatError(manifest_path, field_name, "an object with 'file', 'shape', 'dtype'", repr(entry))
        path = root / entry["file"]
        if root.resolve() not in path.resolve().parents:
            raise DataFormatError(manifest_path, f"{field_name}.file", "a path inside the data set folder",
                                  entry["file"])
        files[field_name] = path
        return open_npy(path, field_name, entry, mmap=mmap)

    arrays = {name: open_entry(name, entry) for name, entry in manifest["arrays"].items()}
    labels, label_classes = {}, {}
    for name, entry in manifest.get("labels", {}).items():
        labels[name] = open_entry(f"labels.{name}", entry)
        label_classes[name] = list(entry.get("classes", []))
    splits = {name: np.asarray(open_entry(f"splits.{name}", entry)) for name, entry in manifest["splits"].items()}

    n = manifest["num_clips"]
    if arrays["audio"].ndim >= 1 and arrays["audio"].shape[0] != n:
        raise DataFormatError(files["audio"], "audio", f"{n} clips (manifest num_clips)", f"{arrays['audio'].shape[0]}")
    if arrays["audio"].ndim >= 2 and arrays["audio"].shape[1] != manifest["segments"]:
        raise DataFormatError(files["audio"], "audio", f"{manifest['segments']} segments (manifest)",
                              f"{arrays['audio'].shape[1]}")
    captions = None
    if "text_clips" in arrays and (root / CAPTIONS).is_file():
        files["captions"] = root / CAPTIONS
        try:
            captions = json.loads((root / CAPTIONS).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(root / CAPTIONS, "captions", "valid UTF-8 JSON", f"unreadable JSON ({exc})") from None
    data = TriModalData(
        audio=arrays["audio"],
        video=arrays["video"],
        text_table=arrays.get("text"),
        clip_text=arrays.get("text_clips"),
        clip_text_mask=arrays.get("text_mask"),
        clip_captions=captions,
        category=np.asarray(arrays["category"]),
        class_names=[str(c) for c in manifest["class_names"]],
        prompts=[str(p) for p in manifest["prompts"]],
        splits=splits,
        labels=labels,
        label_classes=label_classes,
        clip_ids=np.asarray(arrays["clip_ids"]) if "clip_ids" in arrays else None,
        info=manifest.get("info", {}),
        root=root,
    )
    if "text" in manifest.get("modalities", []) and data.text_kind is None:
        raise DataFormatError(manifest_path, "arrays.text", "an entry for the text array (listed in modalities)",
                              "missing", hint="missing modality")
    if manifest["schema_version"] >= 2 and manifest.get("text_kind") != data.text_kind:
        raise DataFormatError(manifest_path, "text_kind", f"{data.text_kind!r} (the text arrays listed)",
                              repr(manifest.get("text_kind")))
    validate(data, files, finite=check_finite)
    return data


def read_manifest(root) -> dict:
    """The parsed and version-checked manifest of a data set folder."""
    return _read_manifest(Path(root))
