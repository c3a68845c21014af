"""Outputs that appear whole or not at all: a folder published by rename, or files moved into a folder.

`atomic_output_dir(out)` yields a fresh folder beside `out` that becomes `out` when the block ends
without an exception (a data set, the codes of `python -m codaar.encode`); `staged_files(out)` yields
one whose files are moved into `out` at the end, each replacing its namesake and leaving `out`'s
other files alone (the evaluation's tables and plots beside an earlier curve); `replace_files`
writes a few text files whole. On an exception, an interruption included, what was staged is
removed and the output is left as it was.

The renames that publish run with SIGINT and SIGTERM held (`interrupts.held_signals`), so a signal
never leaves half of them done. Each writer holds a lock beside its staging folder while it works,
so what a killed writer left (its folder, an old copy moved aside) is told apart from a live
writer's and cleaned at the next write to `out`; an old copy whose replacement never arrived is put
back rather than deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from codaar.runtime.interrupts import held_signals
from codaar.runtime.locks import FileLock, is_held


@contextlib.contextmanager
def atomic_output_dir(out, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it becomes ``out`` by rename (the
    previous ``out`` is replaced only with ``overwrite``; FileExistsError otherwise)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writes(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    with _staging(out, "writer of this data set") as tmp:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700): the permissions of a normal mkdir
        yield tmp
        trash = None
        with held_signals():
            if out.exists():
                # Move the old folder aside first: os.replace cannot replace a non-empty folder.
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, trash / "old")
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(trash / "old", out)  # the previous one stays
                    raise
            else:
                os.replace(tmp, out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_files(out) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` to write files into; on success they are moved into ``out``
    (made if needed), each replacing the file of its name there."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writes(out)
    with _staging(out, "writer of this output") as staging:
        yield staging
        with held_signals():
            out.mkdir(exist_ok=True)
            for path in sorted(staging.iterdir()):
                os.replace(path, out / path.name)


def replace_files(texts: Mapping[Path, str]) -> None:
    """Write each text to its file whole: into a temporary file beside it, then renamed over it (the
    renames with signals held, so all of them happen or none)."""
    staged = {}
    try:
        for path, text in texts.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
            staged[Path(name)] = path
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(name, 0o666 & ~_umask())  # mkstemp makes it private (0600): those of a normal file
        with held_signals():
            for name, path in staged.items():
                os.replace(name, path)
    finally:
        for name in staged:
            name.unlink(missing_ok=True)


@contextlib.contextmanager
def _staging(out: Path, purpose: str) -> Iterator[Path]:
    """A locked staging folder beside ``out``, removed at the end whatever happens."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    lock = FileLock(_lock_of(staging), purpose)
    try:
        lock.acquire()  # (fails on a full disk: it writes who holds it)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        _lock_of(staging).unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _lock_of(partial: Path) -> Path:
    return partial.with_name(partial.name + ".lock")


def remove_dead_writes(out) -> list[Path]:
    """Remove what killed writers of ``out`` left beside it (``.<name>.partial-*`` folders whose lock
    no live process holds, and old copies moved aside, ``.<name>.old-*``, when no writer is live);
    an old copy is first put back at ``out`` if nothing took its place."""
    out = Path(out)
    partials = [p for p in out.parent.glob(f".{out.name}.partial-*") if p.is_dir()]
    live = [p for p in partials if is_held(_lock_of(p))]
    dead = [p for p in partials if p not in live]
    if not live:
        for old in sorted(p for p in out.parent.glob(f".{out.name}.old-*") if p.is_dir()):
            if (old / "old").exists() and not out.exists() and not out.is_symlink():
                os.replace(old / "old", out)  # killed between moving it aside and putting the new one in
            dead.append(old)
    for path in dead:
        shutil.rmtree(path, ignore_errors=True)
        _lock_of(path).unlink(missing_ok=True)
    return dead
