"""An error never prints the contents of a file it could not parse (issue #23 B): a path that
leads to the wrong file (a `latest` linked to /etc/passwd, a CSV that is another file) names the
file and what was expected, never its lines. Checkpoint pointers and metadata are covered in
`test_checkpoint_trust.py`; here the data readers: CSV headers, numbers in CSVs, .npy headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codaar.data import DataFormatError
from codaar.data.extract.annotations import read_labels
from codaar.data.format import open_npy
from codaar.data.labels import parse_event_row
from codaar.data.official_import import read_ave_annotations
from codaar.data.text_files import read_csv_rows

SECRET = "SECRET-77aa-do-not-print"


def refused_without_secret(read, *expected: str) -> None:
    with pytest.raises(DataFormatError) as raised:
        read()
    message = str(raised.value)
    assert SECRET not in message and "root:" not in message, message
    for text in expected:
        assert text in message, (text, message)


def test_a_csv_that_is_another_file_is_named_not_quoted(tmp_path):
    for source in (Path("/etc/passwd"), tmp_path / "secret.csv"):
        if source.name == "secret.csv":
            source.write_text(f"{SECRET},{SECRET}\n1,2\n")
        refused_without_secret(lambda source=source: read_csv_rows(source, ("video_id", "label")), str(source),
                               "the header is not shown")
        refused_without_secret(lambda source=source: read_labels(source), str(source), "header")


def test_numbers_that_do_not_parse_are_not_quoted(tmp_path):
    ave = tmp_path / "Annotations.txt"
    ave.write_text(f"Category&VideoID&Quality&StartTime&EndTime\nDog&v1&good&{SECRET}&{SECRET}\n")
    refused_without_secret(lambda: read_ave_annotations(ave, ["Dog"], ["v1"]), "line 2 StartTime/EndTime",
                           "not shown")
    refused_without_secret(lambda: parse_event_row(SECRET, "2", "Dog", tmp_path / "x.csv", 3), "line 3 onset/offset")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"clip_id,class,start,end\nc1,dog,{SECRET},3\n")
    refused_without_secret(lambda: read_labels(labels), "line 2 column start", "not shown")
    labels.write_text("clip_id,class,start,end\nc1,dog,-4,3\n")
    refused_without_secret(lambda: read_labels(labels), "non-negative", "-4.0")  # a parsed number is shown


def test_an_npy_header_that_does_not_parse_is_not_quoted(tmp_path):
    path = tmp_path / "audio.npy"
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((2, 3), np.float32))
    data = good.read_bytes()
    for contents in (SECRET.encode() * 4, data[:10] + SECRET.encode() + data[10 + len(SECRET):], b"root:x:0:0"):
        path.write_bytes(contents)
        refused_without_secret(lambda: open_npy(path, "audio"), str(path), "unreadable header")
