"""Text files read as text files: the CSVs (captions, labels, prompts, the authors' CSVs, class
maps) and the one-item-per-line lists (class lists, media lists, AVE annotations).

A CSV is handed to the csv module as an open file with ``newline=""``, as the csv module
documents: only the reader decides where a record ends, so a quoted newline stays inside its
field. ``str.splitlines()`` first would cut records at a quoted newline and at U+2028/U+2029,
U+0085, form feeds and the other characters Python counts as line breaks, merging or splitting
rows. A line list splits at ``\\n``, ``\\r\\n`` and ``\\r`` only (universal newlines), so a
U+2028 inside a class name or a path stays in it. Every file may start with a UTF-8 BOM
(``utf-8-sig``); bytes that are not UTF-8 are refused naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import DataFormatError

_BREAKS = ("\r\n", "\n", "\r")


def _read_text(path: Path, kind: str, newline: str | None) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        with open(path, "rb") as fh:
            line = fh.read(exc.start).count(b"\n") + 1
        raise DataFormatError(path, f"line {line}", f"a UTF-8 {kind}",
                              f"a byte that is not UTF-8 (0x{exc.object[exc.start]:02x})") from None
    except IsADirectoryError:
        raise DataFormatError(path, kind, f"a {kind}", "a folder") from None
    except FileNotFoundError:
        raise DataFormatError(path, kind, f"a {kind}", "no such file") from None
    except OSError as exc:
        raise DataFormatError(path, kind, f"a readable {kind}", f"unreadable ({exc.strerror})") from None


def _first_line(text: str) -> str:
    ends = [i for i in (text.find(b) for b in _BREAKS) if i >= 0]
    return text[: min(ends)] if ends else text


def read_csv_records(path, delimiter: str | None = None) -> list[tuple[int, list[str]]]:
    """(line where the record starts, its fields) for every record of a CSV, header included.

    ``delimiter`` None: a tab if the first line has one, else a comma. Line numbers are physical
    lines of the file, so a record with a quoted newline counts its lines.
    """
    path = Path(path)
    text = _read_text(path, "CSV file", newline="")
    if delimiter is None:
        delimiter = "\t" if "\t" in _first_line(text) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records, start = [], 1
    try:
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataFormatError(path, f"line {start}", "a well-formed CSV record", str(exc)) from None
    return records


def read_csv_rows(path, required: tuple[str, ...], delimiter: str | None = None) -> list[tuple[int, dict]]:
    """(line, {column: value}) for every data row of a CSV with a header naming ``required``
    (and maybe more) columns; names and values are stripped, blank records skipped, a row with an
    empty required value refused."""
    path = Path(path)
    records = [(line, fields) for line, fields in read_csv_records(path, delimiter) if any(f.strip() for f in fields)]
    if not records:
        raise DataFormatError(path, "header", f"columns {list(required)}", "an empty file")
    header = [h.strip() for h in records[0][1]]
    missing = [c for c in required if c not in header]
    if missing:  # the header is not quoted: a file that is no such CSV may hold anything on its first line
        raise DataFormatError(path, "header", f"columns {list(required)}",
                              f"{len(header)} columns without {missing} (the header is not shown)")
    rows = []
    for line, fields in records[1:]:
        if any(f.strip() for f in fields[len(header):]):  # empty trailing fields are only trailing delimiters
            raise DataFormatError(path, f"line {line}", f"at most {len(header)} fields (the header's)",
                                  f"{len(fields)} fields")
        row = {name: value.strip() for name, value in zip(header, fields)}
        empty = [c for c in required if not row.get(c)]
        if empty:
            raise DataFormatError(path, f"line {line} column {empty[0]}", "a value", "empty")
        rows.append((line, row))
    return rows


def read_text_lines(path, kind: str = "text file") -> list[tuple[int, str]]:
    """(line number, line without its line break) for every line of a text file; lines end at
    ``\\n``, ``\\r\\n`` or ``\\r`` only."""
    path = Path(path)
    text = _read_text(path, kind, newline=None)  # universal newlines: every break becomes "\n"
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return list(enumerate(lines, start=1))
