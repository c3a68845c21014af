"""Helpers of the data-format tests: the error a bad folder must raise, and manifest edits."""

import json

import pytest

from codaar.data import DataFormatError, load_dataset


def assert_names(err, file, field, expected, found):
    """The DataFormatError message names the file, the field, what was expected and what was found."""
    message = str(err.value)
    for part in (str(file), field, expected, found):
        assert part in message, f"{part!r} not in {message!r}"


def expect_load_error(root, file, field, expected, found):
    with pytest.raises(DataFormatError) as err:
        load_dataset(root)
    assert_names(err, file, field, expected, found)
    return err


def edit_manifest(root, change):
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
