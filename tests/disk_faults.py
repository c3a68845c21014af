"""Real file-system faults for the tests: a small tmpfs that is full (ENOSPC) or read-only (EROFS).

Mounting needs root with CAP_SYS_ADMIN (the sandbox the project's CI runs in has it); elsewhere the
tests that need a mount are skipped with the reason, and the injected faults of test_outputs.py
still run."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k", read_only: bool = False):
    """A fresh tmpfs of `size` mounted at `path` (made if needed) for the block; skips the test when
    this machine does not let the tests mount one."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the real "
                    "ENOSPC/EROFS cases need root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its file system has no byte left; returns the file."""
    filler = folder / "filler"
    block = bytes(4096)
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    for size in (512, 64, 1):  # the last partial block
        with open(filler, "ab", buffering=0) as fh:
            with contextlib.suppress(OSError):
                while True:
                    fh.write(bytes(size))
    assert os.statvfs(folder).f_bavail == 0
    return filler


def leftovers(folder: Path, keep=("filler",)) -> list[str]:
    """Every path under `folder` but those named in `keep`, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name not in keep)
