"""New `.npy` memory maps whose disk space is reserved before anything is written through them.

numpy's `open_memmap(mode="w+")` makes a sparse file: its blocks are allocated only when a page
written through the map is flushed, and on a full disk that write cannot fail with an error: the
kernel kills the process with SIGBUS. `reserved_memmap` allocates every block first
(`os.posix_fallocate`; where the file system or the platform has none, by writing zeros), so a full
disk is an `OSError` (ENOSPC) naming the file, raised before the map exists.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

_ZEROS = 1 << 20  # bytes written at a time where the space cannot be allocated without writing
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # this file system cannot; writing zeros can


def reserved_memmap(path: str | os.PathLike, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new C-ordered `.npy` file at `path` of `shape` and `dtype`, its space allocated, opened as a
    writable memory map (zero-filled)."""
    path = Path(path)
    dtype, shape = np.dtype(dtype), tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        try:
            np.lib.format.write_array_header_1_0(fh, header)
        except ValueError:  # a header of more than 64 KiB needs format 2.0
            np.lib.format.write_array_header_2_0(fh, header)
        size = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        fh.flush()
        reserve(fh.fileno(), size, path)
    return np.lib.format.open_memmap(path, mode="r+")


def reserve(fd: int, size: int, path: str | os.PathLike) -> None:
    """Allocate the blocks of the first `size` bytes of the open file `fd` (extending it to `size`);
    an OSError names `path`."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # not on this platform (macOS)
        pass
    except OSError as exc:
        if exc.errno not in _NO_FALLOCATE:
            raise OSError(exc.errno, os.strerror(exc.errno), os.fspath(path)) from None
    written = os.fstat(fd).st_size
    try:
        os.lseek(fd, written, os.SEEK_SET)
        zeros = bytes(_ZEROS)
        while written < size:
            written += os.write(fd, zeros[: min(_ZEROS, size - written)])
    except OSError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno), os.fspath(path)) from None
