"""SIGINT and SIGTERM as an exception, so that an interrupted program cleans up and says so.

By default SIGTERM (how clusters stop a job) ends a process without running any `finally`, and
SIGINT raises KeyboardInterrupt wherever it lands. Inside `interruptible()` both raise
`Interrupted` in the main thread: the writers' cleanups run (a partial output folder is removed)
and the program prints one line and exits with 128 + the signal's number (130, 143).

`stop_at_boundary()` turns the first signal into a request that a loop checks at its next safe
point (the trainer: the end of a step, where it writes a checkpoint); a second one exits at once.

`held_signals()` holds both signals over a step that must not be cut in half, such as the renames
that publish an output. A signal that arrives meanwhile acts when the step is over: under
`interruptible()` as `Interrupted(completed=True)` (the output is whole), otherwise as it would have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. `completed`: it arrived while an output was being published, which
    finished first."""

    def __init__(self, signum: int, completed: bool = False):
        self.signum, self.completed = signum, completed
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs (in the main thread), SIGINT and SIGTERM raise `Interrupted`."""
    if not _in_main_thread():  # signal handlers can only be set there; the program's main thread decides
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM over the block; one that arrived meanwhile acts at its end (see above).

    Held by a handler that notes them, not by the signal mask: a signal sent to the process reaches
    whichever thread does not block it (torch's threads do not), while Python runs every handler in
    the main thread."""
    if not _in_main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in SIGNALS}
    completed = False
    try:
        yield
        completed = True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived and completed and previous[arrived[0]] is _raise_interrupted:
            raise Interrupted(arrived[0], completed=True)
        if arrived:
            signal.raise_signal(arrived[0])  # what it would have done, now


def interrupted_line(exc: Interrupted, out) -> str:
    """The line a program prints when `exc` stopped it while it wrote `out`."""
    if exc.completed:
        return f"interrupted by {exc.signal_name} while {out} was published; it was completed first"
    return f"interrupted by {exc.signal_name}: {out} is as it was before this command (no partial output)"


class StopRequest:
    """What `stop_at_boundary` hands its block: `signum`, the first SIGINT or SIGTERM that arrived
    (None while none has)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_at_boundary(what: str = "the run") -> Iterator[StopRequest]:
    """While the block runs (in the main thread), the first SIGINT or SIGTERM only asks it to stop:
    `request.signum` is set and the block checks it at its next safe point (a training step's end).
    A second signal exits at once with 128 + its number: `os._exit`, as abrupt as kill -9, which
    every writer of the block must survive (a checkpoint's `latest` is replaced by a rename, so it is
    the old one or the new one, never half of either). Each says so in one line on stderr, written
    with `os.write` (a handler may interrupt a `print`)."""
    request = StopRequest()
    if not _in_main_thread():
        yield request
        return

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if request.signum is None:
            request.signum = signum
            os.write(2, f"{name}: {what} stops at the end of this step and writes a checkpoint "
                        f"(send it again to stop at once)\n".encode())
            return
        os.write(2, f"{name} again: {what} stops at once (the last complete checkpoint is kept)\n".encode())
        os._exit(128 + signum)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
