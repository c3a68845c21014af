"""Every CSV and line list the project reads is read as a text file: a quoted newline stays in its
field, U+2028/U+2029 (and U+0085, form feeds, ...) are characters, not line breaks, a UTF-8 BOM is
no part of the first name, and CRLF or CR line ends read like LF."""

import numpy as np
import pytest

from codaar.data import DataFormatError
from codaar.data.extract.annotations import read_labels
from codaar.data.extract.captions import read_captions
from codaar.data.extract.inputs import find_media
from codaar.data.official_import import read_ave_annotations, read_avvp_labels, read_lines
from codaar.data.text_files import read_csv_records, read_csv_rows, read_text_lines
from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.run import load_class_map
from tests.test_data_import import ROWS, make_layout, run_import

# Characters str.splitlines() breaks at, besides \n and \r.
ODD_BREAKS = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e"
VARIANTS = [(bom, eol) for bom in (False, True) for eol in ("\n", "\r\n", "\r")]
VARIANT_IDS = [f"{'bom' if bom else 'nobom'}-{ {chr(10): 'lf', chr(13) + chr(10): 'crlf', chr(13): 'cr'}[eol]}"
               for bom, eol in VARIANTS]


def write_csv(path, rows, bom=False, eol="\n", delimiter=","):
    """The rows as a spreadsheet writes them: a field with a line end, quote or delimiter quoted
    (quotes doubled), U+2028 and friends written bare."""
    def field(value):
        if any(c in value for c in (delimiter, '"', "\r", "\n")):
            return '"' + value.replace('"', '""') + '"'
        return value
    text = "".join(delimiter.join(map(field, row)) + eol for row in rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def write_lines(path, lines, bom=False, eol="\n"):
    path.write_bytes(("\ufeff" if bom else "").encode() + eol.join(lines).encode("utf-8") + eol.encode())
    return path


CAPTIONS = ["a dog barks,\nthen a car passes",  # a quoted newline
            "rain\r\non a roof",  # a quoted CRLF
            "bells\u2028ring", "a\u2029b", "x" + ODD_BREAKS + "y",  # bare line-break characters
            'she said "hello"']  # a quoted quote


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_csv_records_keep_quoted_newlines_and_unicode_breaks(tmp_path, bom, eol):
    rows = [["clip_id", "caption"]] + [[f"clip{i}", c] for i, c in enumerate(CAPTIONS)]
    path = write_csv(tmp_path / "c.csv", rows, bom, eol)
    records = read_csv_records(path)
    assert [fields for _, fields in records] == rows
    # line numbers are physical lines: a record after a quoted line break starts further down
    assert records[0][0] == 1 and records[1][0] == 2 and records[2][0] == 4
    assert read_csv_rows(path, ("clip_id", "caption"))[0] == (2, {"clip_id": "clip0", "caption": CAPTIONS[0]})


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_captions_csv(tmp_path, bom, eol):
    rows = [["clip_id", "caption"]] + [["a" if i % 2 else "b", c] for i, c in enumerate(CAPTIONS)]
    captions = read_captions(write_csv(tmp_path / "captions.csv", rows, bom, eol))
    assert captions == {"b": CAPTIONS[0::2], "a": CAPTIONS[1::2]}


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_labels_csv(tmp_path, bom, eol):
    names = ["dog, barking", "church\u2028bell", "train\nhorn"]
    rows = [["clip_id", "class", "start", "end", "split"],
            ["v1", names[0], "0", "4", "train"], ["v1", names[1], "5", "", "train"], ["v2", names[2], "", "", "test"]]
    classes, annotations = read_labels(write_csv(tmp_path / "labels.csv", rows, bom, eol))
    assert classes == sorted(names)
    assert annotations["v1"].events == [(0.0, 4.0, names[0]), (5.0, float("inf"), names[1])]
    assert annotations["v2"].events == [(0.0, float("inf"), names[2])] and annotations["v2"].split == "test"


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_authors_meta_and_prompts_csv(tmp_path, bom, eol):
    layout = make_layout(tmp_path / "src", ROWS)
    write_csv(layout["meta_csv"], [["category", "video_id", "split"], *map(list, ROWS)], bom, eol)
    prompts = {"dog barking": "a dog\nbarking", "church bell": "a bell\u2028ringing",
               "train horn": "a train" + ODD_BREAKS + "horn"}
    write_csv(layout["prompts_csv"], [["label", "prompt"], *map(list, prompts.items())], bom, eol)
    data = run_import(layout, tmp_path / "out")
    assert list(data.clip_ids) == [r[1] for r in ROWS]
    assert dict(zip(data.class_names, data.prompts)) == prompts


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_avvp_csv(tmp_path, bom, eol):
    classes = ["speech", "dog\u2028bark", "car\nengine"]
    rows = [["filename", "onset", "offset", "event_labels"],
            ["AAAAAAAAAAA_30_40", "0,5", "3,10", "speech,dog\u2028bark"],
            ["BBBBBBBBBBB_0_10", "2", "4", "car\nengine"]]
    path = write_csv(tmp_path / "audio.csv", rows, bom, eol, delimiter="\t")
    labels, clips = read_avvp_labels(path, classes, ["AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC"])
    assert clips.tolist() == [0, 1]
    assert labels[0, 0:3, 0].all() and labels[0, 5:10, 1].all() and not labels[0, 3:5, :2].any()
    assert labels[1, 2:4, 2].all() and labels[1, :2, 3].all()


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_class_map_csv(tmp_path, bom, eol):
    pairs = [["source", "target"], ["dog\u2028bark", "dog"], ["bell, church", "bell\nchurch"], ["x\x85y", "z"]]
    assert load_class_map(write_csv(tmp_path / "map.csv", pairs, bom, eol)) == dict(pairs[1:])


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_class_map_json_with_bom(tmp_path, bom, eol):
    path = tmp_path / "map.json"
    path.write_bytes(("\ufeff" if bom else "").encode() + eol.join(['{"a\u2028b":', '"c"}']).encode())
    assert load_class_map(path) == {"a\u2028b": "c"}


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_class_list_and_ave_annotations(tmp_path, bom, eol):
    names = ["dog\u2028barking", "church\x85bell", "train horn"]
    assert read_lines(write_lines(tmp_path / "cats.txt", names + [""], bom, eol)) == names
    lines = ["Category&VideoID&Quality&StartTime&EndTime", f"{names[0]}&AAAAAAAAAAA&good&2&6",
             f"{names[1]}&BBBBBBBBBBB&good&0&10"]
    labels = read_ave_annotations(write_lines(tmp_path / "Annotations.txt", lines, bom, eol), names,
                                  ["AAAAAAAAAAA", "BBBBBBBBBBB"])
    assert labels.shape == (2, 10, 4) and labels[0, 2:6, 0].all() and labels[1, :, 1].all()


@pytest.mark.parametrize("bom,eol", VARIANTS, ids=VARIANT_IDS)
def test_media_list(tmp_path, bom, eol):
    names = ["first.mp4", "odd\u2028name.mp4", "x\x0cy.wav"]
    listing = write_lines(tmp_path / "list.txt", ["# clips", *names], bom, eol)
    assert find_media([listing]) == [tmp_path / n for n in names]


def test_text_lines_split_only_at_line_ends(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a\u2028b\r\nc\rd\ne\x85f".encode())
    assert read_text_lines(path) == [(1, "a\u2028b"), (2, "c"), (3, "d"), (4, "e\x85f")]


def test_bad_text_files_name_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"clip_id,caption\nv1,ok\nv2,caf\xe9\n")
    with pytest.raises(DataFormatError, match=r"c\.csv: field 'line 3'.*UTF-8.*0xe9"):
        read_captions(path)
    path.write_text('clip_id,caption\nv1,"never closed\nv2,x\n')
    with pytest.raises(DataFormatError, match=r"c\.csv: field 'line 2'.*well-formed CSV"):
        read_captions(path)
    path.write_text("clip_id,caption\nv1,a,b\n")  # a stray comma would shift the columns
    with pytest.raises(DataFormatError, match=r"line 2.*at most 2 fields.*3 fields"):
        read_captions(path)
    path.write_text("clip_id,caption\nv1,a,,\n")  # trailing delimiters are harmless
    assert read_captions(path) == {"v1": ["a"]}
    with pytest.raises(DataFormatError, match="no such file"):
        read_captions(tmp_path / "absent.csv")
    with pytest.raises(DataFormatError, match="a folder"):
        read_lines(tmp_path)
    path.write_bytes(b"source,target\n\xff,b\n")
    with pytest.raises(EvaluationError, match=r"--class-map .*c\.csv.*line 2"):
        load_class_map(path)


def test_extract_prompts_csv_reads_quoted_newlines(tmp_path):
    # The extraction's --prompts CSV goes through the same reader (codaar/data/extract/run.py).
    path = write_csv(tmp_path / "p.csv", [["label", "prompt"], ["dog", "a\ndog"], ["bell\u2028x", "b"]], True, "\r\n")
    assert {r["label"]: r["prompt"] for _, r in read_csv_rows(path, ("label", "prompt"))} == {"dog": "a\ndog",
                                                                                               "bell\u2028x": "b"}
    assert np.array_equal([line for line, _ in read_csv_rows(path, ("label", "prompt"))], [2, 4])
