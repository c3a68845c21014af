"""The resumable, streaming side of an extraction: a work folder beside OUT.

It holds one growing ``.npy`` file per per-clip array and a journal with one JSON line per input
file (its clips, or the reason it was skipped, and the array length after it). Rows are appended
as each window of a file is decoded, so memory never holds more than one window's features; the
journal line is written after the file's rows, so a line that is there describes rows that are
there (the rows of a file found unusable midway are dropped before its line is written). A killed
run is resumed by truncating every array to the journal's last length and continuing with the
next file; the arrays only ever receive the same bytes in the same order, so the result equals an
uninterrupted run bit for bit. Each journal line also holds its input's fingerprint (size, mtime,
sampled content digest: `codaar.data.fingerprint`); a resumed run rewinds to the first input that
changed since and extracts it and the files after it again.

At the end the headers get their final length and the files are hard-linked (copied where links
are not possible) into the output folder, which appears atomically; the work folder is removed
only after that. The work folder records a digest of the run's inputs and settings and refuses
to resume a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

HEADER_BYTES = 256  # fixed, so the header can be rewritten in place with the final length
JOURNAL = "journal.jsonl"
STATE = "state.json"


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """An .npy version 1.0 header padded to HEADER_BYTES (the format allows any space padding)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(int(s) for s in shape)}).encode("latin1")
    padding = HEADER_BYTES - 10 - len(text) - 1
    if padding < 0:
        raise ValueError(f"npy header for shape {shape} does not fit in {HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER_BYTES - 10) + text + b" " * padding + b"\n"


class GrowingArray:
    """An .npy file whose first axis grows as rows are appended."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype, rows: int):
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        if not self.path.exists():
            self.path.write_bytes(_npy_header(self.dtype, (0,) + self.row_shape))
        needed = HEADER_BYTES + rows * self.row_bytes
        if self.path.stat().st_size < needed:
            raise RuntimeError(f"{self.path}: shorter than its journal says ({self.path.stat().st_size} < {needed} "
                               "bytes); remove the work folder (or pass --restart) to start over")
        self.truncate(rows)  # drop rows of a file whose journal line was never written

    def truncate(self, rows: int) -> None:
        os.truncate(self.path, HEADER_BYTES + rows * self.row_bytes)
        self.rows = rows

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {self.row_shape} expected, got {block.shape[1:]}")
        with open(self.path, "ab") as fh:
            fh.write(block.tobytes())
        self.rows += block.shape[0]

    def finalize(self) -> None:
        with open(self.path, "r+b") as fh:
            fh.write(_npy_header(self.dtype, (self.rows,) + self.row_shape))


class WorkFolder:
    """The journal and growing arrays of one extraction (see the module docstring)."""

    def __init__(self, root: Path, fingerprint: dict, arrays: dict[str, tuple[tuple[int, ...], str]],
                 restart: bool = False):
        self.root = Path(root)
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        if self.root.exists():
            state = self._read_state()
            if restart or state.get("digest") != digest:
                if not restart and self._read_journal():  # (a folder with no file done has nothing to resume)
                    raise RuntimeError(
                        f"{self.root} holds an unfinished extraction of other inputs or settings; rerun it with the "
                        "same inputs and options to resume it, or pass --restart to discard it")
                shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE).write_text(json.dumps({"digest": digest, "fingerprint": fingerprint}, indent=1) + "\n")
        self.entries = self._read_journal()
        rows = self.entries[-1]["rows_total"] if self.entries else 0
        self.arrays = {name: GrowingArray(self.root / f"{name}.npy", shape, dtype, rows)
                       for name, (shape, dtype) in arrays.items()}
        self._rewrite_journal()  # drops a torn last line, so appends start on a fresh line

    def _read_state(self) -> dict:
        try:
            return json.loads((self.root / STATE).read_text())
        except (OSError, ValueError):
            return {}

    def _read_journal(self) -> list[dict]:
        path = self.root / JOURNAL
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # the run was killed while writing this line: it and anything after never happened
        return entries

    def _rewrite_journal(self) -> None:
        text = "".join(json.dumps(e) + "\n" for e in self.entries)
        tmp = self.root / (JOURNAL + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.root / JOURNAL)

    @property
    def rows(self) -> int:
        return self.entries[-1]["rows_total"] if self.entries else 0

    def append(self, blocks: dict[str, np.ndarray]) -> None:
        """Append rows to every array (the same number to each); they count once `commit` journals them."""
        counts = {name: block.shape[0] for name, block in blocks.items()}
        if set(counts) != set(self.arrays) or len(set(counts.values())) > 1:
            raise ValueError(f"append: expected equal row counts for {sorted(self.arrays)}, got {counts}")
        for name, block in blocks.items():
            self.arrays[name].append(block)

    def rewind(self, count: int) -> None:
        """Keep only the first ``count`` journalled files (the journal first, so a crash in between
        leaves arrays longer than the journal, which the next open truncates)."""
        self.entries = self.entries[:count]
        self._rewrite_journal()
        for array in self.arrays.values():
            array.truncate(self.rows)

    def discard_uncommitted(self) -> None:
        """Drop the rows appended since the last journal line."""
        for array in self.arrays.values():
            array.truncate(self.rows)

    def commit(self, entry: dict) -> None:
        """Journal one input file: its entry and the array length after its rows."""
        entry = dict(entry, rows_total=next(iter(self.arrays.values())).rows)
        with open(self.root / JOURNAL, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        self.entries.append(entry)

    def link_arrays(self, folder: Path, filenames: dict[str, str]) -> None:
        """Give the arrays their final headers and put them into ``folder`` under ``filenames``."""
        for name, array in self.arrays.items():
            array.finalize()
            target = Path(folder) / filenames[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(array.path, target)
            except OSError:
                shutil.copyfile(array.path, target)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
