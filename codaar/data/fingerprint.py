"""Cheap fingerprints of files and data sets: what a run was trained on, what an extraction read.

A file's fingerprint is its size, its modification time (ns) and a SHA-256 of sampled blocks: up to
`BLOCKS` blocks of `BLOCK` bytes at evenly spaced offsets, the first and the last included (a file
of at most BLOCKS x BLOCK bytes is hashed whole). So a fingerprint costs at most 1 MiB of reads per
file however large the file, and it catches a resize, a rewrite in place (a new mtime), and a
changed header or any change that touches a sampled block even when the mtime was put back. It
misses only a change confined to unsampled bytes with the mtime restored; a full hash would read
terabytes on every resume (docs/design.md §6.4).

A data set folder's fingerprint is its absolute path, the SHA-256 of its manifest and the
fingerprint of every file the manifest names (and `captions.json`). The built-in data set has no
files: its generator settings (`info`: preset, seed, sizes, generator version) are its fingerprint,
with a sampled digest of each array's bytes that catches a generator changed under the same settings.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .format import MANIFEST, read_manifest

BLOCK = 64 * 1024
BLOCKS = 16


def _offsets(size: int) -> list[int]:
    if size <= BLOCK * BLOCKS:
        return list(range(0, size, BLOCK))
    last = size - BLOCK
    return sorted({round(i * last / (BLOCKS - 1)) for i in range(BLOCKS)})


def file_fingerprint(path) -> dict:
    """{"size", "mtime_ns", "sampled_sha256"} of one file (see the module docstring)."""
    path = Path(path)
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest = hashlib.sha256(str(stat.st_size).encode())
        for offset in _offsets(stat.st_size):
            fh.seek(offset)
            digest.update(fh.read(BLOCK))
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns), "sampled_sha256": digest.hexdigest()}


def array_fingerprint(array) -> dict:
    """{"shape", "dtype", "sampled_sha256"} of an in-memory array: the same sampling over its bytes."""
    array = np.ascontiguousarray(array)
    raw = array.reshape(-1).view(np.uint8)
    digest = hashlib.sha256(str(raw.size).encode())
    for offset in _offsets(raw.size):
        digest.update(raw[offset:offset + BLOCK].tobytes())
    return {"shape": [int(s) for s in array.shape], "dtype": array.dtype.str, "sampled_sha256": digest.hexdigest()}


def _listed_files(root: Path, manifest: dict) -> list[str]:
    entries = list(manifest.get("arrays", {}).values()) + list(manifest.get("labels", {}).values()) \
        + list(manifest.get("splits", {}).values())
    names = [e["file"] for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)]
    if (root / "captions.json").is_file():
        names.append("captions.json")
    return sorted(set(names))


def data_fingerprint(data) -> dict:
    """The fingerprint of a `TriModalData`: of its folder when it has one, else of its generator and arrays."""
    if data.root is not None:
        return folder_fingerprint(data.root)
    arrays = {"audio": data.audio, "video": data.video, "category": data.category}
    for name, value in (("text", data.text_table), ("text_clips", data.clip_text), ("text_mask", data.clip_text_mask)):
        if value is not None:
            arrays[name] = value
    arrays.update({f"labels_{name}": value for name, value in data.labels.items()})
    arrays.update({f"splits/{name}": value for name, value in data.splits.items()})
    kind = "built-in" if data.info.get("source") == "synthetic" else "in-memory"
    return {"kind": kind, "generator": dict(data.info) if kind == "built-in" else None,
            "arrays": {name: array_fingerprint(value) for name, value in sorted(arrays.items())}}


def folder_fingerprint(root) -> dict:
    """The fingerprint of a data set folder: absolute path, manifest digest, every listed file's fingerprint."""
    root = Path(os.path.abspath(root))
    manifest = read_manifest(root)
    files = {name: file_fingerprint(root / name) for name in _listed_files(root, manifest)}
    return {"kind": "folder", "path": str(root),
            "manifest_sha256": hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest(), "files": files}


def describe(fingerprint: dict | None) -> str:
    """A data set in a few words: its folder, or the built-in preset and seed."""
    if not isinstance(fingerprint, dict):
        return "unrecorded data"
    if fingerprint.get("kind") == "folder":
        return str(fingerprint.get("path"))
    generator = fingerprint.get("generator") or {}
    if fingerprint.get("kind") == "built-in":
        return f"the built-in data set (preset {generator.get('preset')}, seed {generator.get('seed')})"
    return "an in-memory data set"


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _file_change(name: str, old: dict, new: dict) -> str | None:
    parts = []
    if old.get("size") != new.get("size"):
        parts.append(f"size {old.get('size')} -> {new.get('size')} bytes")
    if old.get("sampled_sha256") != new.get("sampled_sha256"):
        parts.append("content changed (sampled blocks differ)")
    if old.get("mtime_ns") != new.get("mtime_ns"):
        parts.append(f"modified ({_when(old['mtime_ns'])} -> {_when(new['mtime_ns'])})"
                     if isinstance(old.get("mtime_ns"), int) and isinstance(new.get("mtime_ns"), int)
                     else "modification time changed")
    if not parts:
        return None
    return f"{name}: " + ", ".join(parts)


def differences(recorded: dict | None, current: dict) -> list[str]:
    """What differs between a recorded fingerprint and the current one, one phrase each ([]: the same
    data). A recorded None (a run of a codaar that recorded none) compares equal."""
    if recorded is None:
        return []
    if not isinstance(recorded, dict) or recorded.get("kind") != current.get("kind"):
        return [f"the run's data was {describe(recorded)}, this is {describe(current)}"]
    found = []
    if recorded["kind"] == "folder":
        if recorded.get("path") != current.get("path"):
            found.append(f"folder {recorded.get('path')} -> {current.get('path')}")
        if recorded.get("manifest_sha256") != current.get("manifest_sha256"):
            found.append("manifest.json: content changed")
        old, new = recorded.get("files") or {}, current.get("files") or {}
    else:
        old_gen, new_gen = recorded.get("generator") or {}, current.get("generator") or {}
        old_cfg, new_cfg = old_gen.get("config") or {}, new_gen.get("config") or {}
        changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        found += [f"generator setting {k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed]
        if old_gen.get("generator_version") != new_gen.get("generator_version"):
            found.append(f"generator version {old_gen.get('generator_version')} -> {new_gen.get('generator_version')}")
        old, new = recorded.get("arrays") or {}, current.get("arrays") or {}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            found.append(f"{name}: gone")
        elif name not in old:
            found.append(f"{name}: new")
        elif recorded["kind"] == "folder":
            change = _file_change(name, old[name], new[name])
            if change:
                found.append(change)
        elif old[name] != new[name]:
            reshaped = any(old[name].get(k) != new[name].get(k) for k in ("shape", "dtype"))
            found.append(f"array {name}: " + ("shape or dtype changed" if reshaped
                                              else "content changed (sampled blocks differ)"))
    return found


def refusal(recorded: dict | None, current: dict, what: str) -> str | None:
    """One line refusing to use `current` for `what` when it is not the data `recorded`; None when it is."""
    found = differences(recorded, current)
    if not found:
        return None
    return (f"data {describe(current)}: " + "; ".join(found) + f" since the run was trained on it ({what} needs "
            "the same data)")
