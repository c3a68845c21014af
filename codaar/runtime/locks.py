"""One writer per folder: an advisory lock file that dies with its process.

`FolderLock(folder)` takes `folder/.lock` (`FileLock(path)` any lock file) with `filelock` (on Unix an
`fcntl.flock`): the kernel releases it when the holding process exits in any way (SIGKILL included),
so a lock left by a killed run is simply taken over. filelock also checks that the file it locked is
still the one at the path (a writer that removes its lock file after use cannot split the contenders
over two files) and closes the descriptor in forked children, so a child cannot keep a dead parent's
lock. The holder writes its pid, host and start time into the file as soon as it has the lock (a
contender opens the file without truncating it), for the message a second writer gets. flock is
local to one machine: on shared network storage, where several nodes write the same folder, only
the operating system's own NFS locking protects it (torchrun writes from rank 0 only).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

import filelock

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another live process writes the folder."""


class FileLock:
    """Hold the lock file `path` for this process; `FolderBusyError` names the live holder if there is one."""

    def __init__(self, path: str | Path, purpose: str = "run"):
        self.path = Path(path)
        self.purpose = purpose
        self._lock = filelock.FileLock(self.path, mode=0o644, thread_local=False, blocking=False,
                                      on_acquired=_write_holder)

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise FolderBusyError(f"{self.path.parent} is being written by another {self.purpose} "
                                  f"({_read_holder(self.path)}); wait for it, stop it, or choose another folder"
                                  ) from None
        return self

    def release(self) -> None:
        self._lock.release()

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
    (a leftover file of a dead holder does not count). A shared flock tried on the file as it is:
    filelock has no such question, and taking its lock to ask would create a file that is absent."""
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


def _write_holder(fd: int) -> None:
    """filelock's `on_acquired`: the locked file names its holder."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    os.fsync(fd)


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
