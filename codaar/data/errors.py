"""The one exception every data-reading path raises for bad input.

A data problem is reported as *where* (the file, and the field inside it), *what was
expected* and *what was found*, so a user with a 40k-clip import can fix the one bad
file without a debugger. It subclasses ValueError so callers that already catch
ValueError keep working.
"""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """Bad or inconsistent data on disk or in memory.

    Attributes ``file``, ``field``, ``expected`` and ``found`` are kept for programs;
    the message carries all four for people.
    """

    def __init__(self, file, field: str, expected, found, hint: str | None = None):
        self.file = os.fspath(file) if file is not None else "<in memory>"
        self.field = field
        self.expected = expected
        self.found = found
        self.hint = hint
        message = f"{self.file}: field '{field}': expected {expected}, found {found}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):
        # Keep the exception picklable (DataLoader workers send exceptions across processes).
        return (type(self), (self.file, self.field, self.expected, self.found, self.hint))
