"""One writer per folder: an advisory lock file that dies with its process.

`FolderLock(folder)` takes `folder/.lock` (`FileLock(path)` any lock file) with `fcntl.flock`: the kernel releases it when the holding
process exits in any way (SIGKILL included), so a lock left by a killed run is simply taken over.
The file also names its holder (pid, host, start time) for the message a second writer gets.
flock is local to one machine: on shared network storage, where several nodes write the same
folder, only the operating system's own NFS locking protects it (torchrun writes from rank 0 only).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another live process writes the folder."""


class FileLock:
    """Hold the lock file `path` for this process; `FolderBusyError` names the live holder if there is one."""

    def __init__(self, path: str | Path, purpose: str = "run"):
        self.path = Path(path)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusyError(f"{self.path.parent} is being written by another {self.purpose} ({holder}); "
                                  f"wait for it, stop it, or choose another folder") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            os.fsync(fd)
        except OSError:  # a full disk: the lock is not taken, and its descriptor not kept
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FolderLock(FileLock):
    """One writer per folder: holds `folder/.lock`."""

    def __init__(self, folder: str | Path, purpose: str = "run"):
        super().__init__(Path(folder) / LOCK_NAME, purpose)


def is_held(path: str | Path) -> bool:
    """Whether a live process holds the lock of a folder (`folder/.lock`) or the lock file `path`
    (a leftover file of a dead holder does not count)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOCK_NAME
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
