"""Where a program may write, and the line it prints when the machine refuses a file operation.

`check_output(out, reads)` runs before a program writes or deletes anything. It refuses an output
that is, contains or lies inside a path the same command reads (a run's checkpoints, a data folder,
media inputs, weight files, a --config file), naming both, with symlinks and relative paths
resolved. So no command destroys its own input, `--overwrite` included. It also refuses an output
that cannot be made (a regular file on the way to it) or written (a read-only file system, no
permission) before any work is done.

`os_error_line(exc, out)` is the one line for an `OSError` met while working: the path (the
output when the system call named none, as a failed write() does) and the cause in words with its
errno name: a full disk (ENOSPC), a read-only file system (EROFS), too many open files (EMFILE),
a regular file where a folder should be (ENOTDIR), ...
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PathLike = str | os.PathLike


class OutputError(ValueError):
    """An output a program must not or cannot write; the message names the paths and the cause."""


def check_output(out: PathLike, reads: Mapping[str, PathLike | Iterable[PathLike] | None] | None = None,
                 flag: str = "--out") -> None:
    """Refuse `out` (an output folder or file, shown as `flag`) if it is, contains or lies inside a
    path in `reads` ({what the path is, e.g. "--data": a path, several paths, or None}), or if it
    cannot be created or written. Raises `OutputError` with one line."""
    target = Path(out).resolve()
    for label, paths in (reads or {}).items():
        for path in _as_paths(paths):
            read = path.resolve()
            relation = ("is" if read == target else "lies inside" if read in target.parents
                        else "contains" if target in read.parents else None)
            if relation is not None:
                raise OutputError(f"{flag} {_shown(out, target)} {relation} {label} {_shown(path, read)}, which this "
                                  f"command reads: it never writes over its own input; choose another {flag}")
    _check_location(out, target, flag)


def _as_paths(paths) -> list[Path]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths if p is not None]


def _shown(path: PathLike, resolved: Path) -> str:
    return str(path) if os.fspath(path) == str(resolved) else f"{path} (= {resolved})"


def _check_location(out: PathLike, target: Path, flag: str) -> None:
    """The nearest existing folder on the way to `target` must be a folder this process can write in."""
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise OutputError(f"{flag} {out}: {existing} is a regular file, so no folder can be made under it (ENOTDIR)")
    folder = existing if existing.is_dir() else existing.parent
    for place in dict.fromkeys((folder, folder.parent if folder == target else folder)):
        if not os.access(place, os.W_OK):
            read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
            cause = "read-only file system (EROFS)" if read_only else "permission denied (EACCES)"
            raise OutputError(f"{flag} {out}: cannot write in {place}: {cause}")


# What each errno means for the person running the program (errno names are kept beside it).
_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EMFILE: "too many open files in this process (raise the limit: ulimit -n)",
    errno.ENFILE: "too many open files on this machine",
    errno.ENOTDIR: "a part of the path is a regular file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (the file-size limit, ulimit -f, or the file system's)",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
}


def os_error_line(exc: OSError, out: PathLike | None = None) -> str:
    """One line for a failed file operation: where (the path the system call names, else `out`) and why."""
    if exc.errno is None:  # raised by this project with its own message (FileExistsError("... already exists"))
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    cause = f"{_CAUSES.get(exc.errno, exc.strerror or name)} ({name})"
    if exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {cause}"
    return f"writing {out}: {cause}" if out is not None else cause
