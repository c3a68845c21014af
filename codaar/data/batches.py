"""Training batches off the critical path: gathered with one copy into reused buffers, a few steps
ahead, on threads; on CUDA copied to the device on a side stream the training step waits on.

One copy. ``TriModalDataset.__getitems__`` (the DataLoader path) gathers the rows, splits them into
one dict per clip, and the trainer used to restack and pin those: three host copies of an 83 MB
batch at the paper's shapes. `BatchGather` writes each input of the model (``audio``, ``video``,
``text``, ``text_mask``) with one ``np.take(array, rows, axis=0, out=buffer)`` straight into the
(pinned) buffer that the device copy reads, rows in the step's order. ``mode="clip"`` because with
numpy's default ``"raise"`` a given ``out`` is filled through a temporary, a second copy; the rows
are checked against the split beforehand instead. Class-prompt text is gathered from the prompt
table by each clip's class, its mask (all True) from a table of the same shape.

Threads, not worker processes. numpy releases the GIL while ``take`` copies a plain dtype, memory-
mapped pages included, so a thread gathers while the main thread runs the step: nothing is pickled,
nothing crosses a process boundary (a process would hand its batch over through shared memory, a
second copy), and a worker cannot die on its own: whatever it raises comes back through its future
and is raised in the main thread as a `BatchError` naming the worker and the step. Nothing waits on
a queue that a dead worker would never fill.

A ring of buffers. With ``workers`` threads the batches of the next ``depth`` steps are gathered
while the current one is in use, into ``depth + 1`` sets of buffers taken in turn; a set is taken
again only after the main thread has moved past its batch and, on CUDA, after the device copy that
read it has finished (an event the worker waits on). With 0 workers the main thread gathers each
batch when it is asked for (still one copy), alternating two sets.

Storage dtype until the device. Features travel as the data set stores them (a float16 set moves
half the bytes) and are cast to the model's dtype on the device, on the side stream; widening
float16 and the rounding of a narrowing cast are exact and the same on every device, so the batch is
bit for bit what a cast on the host gave.

`bench/bench_data_pipeline.py` measures GB/s and batches/s against the trainer's former path.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Self

import numpy as np
import torch

from .container import TriModalData
from .errors import DataFormatError


class BatchError(RuntimeError):
    """Reading a batch failed (the message names the thread, the step and the cause)."""


def default_workers() -> int:
    """Gathering threads when none are asked for: one per CPU beyond the one the step runs on, at most 4
    (numpy's copy runs at memory speed: a few threads feed a GPU step at the paper's sizes)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class BatchGather:
    """The model's inputs for clips of one split, gathered with one copy per input.

    Keys: the modalities, plus ``text_mask`` [B, L] bool (True = real token) with text. Features keep
    the dtype the data stores them in; `to_device` casts them."""

    def __init__(self, data: TriModalData, split: str, modalities: tuple[str, ...]):
        self.clips = np.asarray(data.split(split), dtype=np.int64)
        self.category = np.asarray(data.category, dtype=np.int64)
        # key -> (array, whether its rows are classes rather than clips)
        self.sources: dict[str, tuple[np.ndarray, bool]] = {m: (data.modality(m), False)
                                                            for m in modalities if m != "text"}
        if "text" in modalities:
            if data.clip_text is not None:
                self.sources["text"] = (data.clip_text, False)
                self.sources["text_mask"] = (data.clip_text_mask, False)
            else:
                self.sources["text"] = (data.text_table, True)
                self.sources["text_mask"] = (np.ones(data.text_table.shape[:2], dtype=bool), True)

    def buffers(self, rows: int, pin: bool = False) -> dict[str, torch.Tensor]:
        """Empty host tensors for a batch of up to `rows` clips (pinned for a fast device copy)."""
        return {key: torch.empty((rows, *array.shape[1:]), dtype=_torch_dtype(array.dtype), pin_memory=pin)
                for key, (array, _) in self.sources.items()}

    def gather_into(self, positions, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Write the clips at `positions` of the split, in that order, into `buffers`; returns the
        filled leading rows of each (views of the buffers)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (positions.size and not 0 <= positions.min() <= positions.max() < len(self.clips)):
            span = f", range [{positions.min()}, {positions.max()}]" if positions.size else ""
            found = f"shape {positions.shape}{span}"
            raise IndexError(f"batch positions: expected a 1-D array in [0, {len(self.clips)}) (the split's clips), "
                             f"found {found}")
        clips = self.clips[positions]
        rows = {False: clips, True: self.category[clips]}
        filled = {}
        for key, (array, by_class) in self.sources.items():
            _check_not_cut_short(array, key)
            target = buffers[key][: len(clips)]
            if target.shape[0] != len(clips):
                raise ValueError(f"a batch of {len(clips)} clips does not fit buffers of {buffers[key].shape[0]}")
            np.take(array, rows[by_class], axis=0, out=target.numpy(), mode="clip")  # rows checked above
            filled[key] = target
        return filled


def to_device(host: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch on `device` (asynchronous from pinned memory), floating features cast to `dtype` there."""
    moved = {key: value.to(device, non_blocking=True) for key, value in host.items()}
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in moved.items()}


class Prefetcher:
    """The batches of a planned sequence of steps, on the device, gathered ahead by `workers` threads.

    `plan` gives each step's clip positions in order; `next(positions)` returns the next step's batch
    (the positions must be the planned ones: a check that the caller and the plan agree). A batch is
    valid until the next call (on the CPU it may be the gathering buffer itself). `rows` is the
    largest batch of the plan. `first_step` numbers the steps in error messages: the first planned
    batch is step first_step + 1, as the trainer logs it. `depth`: batches gathered ahead with workers
    (default max(2, workers)). Close it (or use it as a context manager) to stop the workers."""

    def __init__(self, gather: BatchGather, plan: Iterable[np.ndarray], rows: int, device: torch.device,
                 dtype: torch.dtype, workers: int, depth: int | None = None, first_step: int = 0):
        if workers < 0:
            raise ValueError(f"workers: expected an integer >= 0, found {workers}")
        self.depth = 0 if workers == 0 else max(2, workers) if depth is None else depth
        if workers and self.depth < 1:
            raise ValueError(f"depth: expected an integer >= 1 with workers, found {self.depth}")
        self.gather, self.device, self.dtype, self.workers = gather, torch.device(device), dtype, workers
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._buffers = [gather.buffers(rows, pin=cuda) for _ in range(self.depth + 1 if workers else 2)]
        self._copied: list[torch.cuda.Event | None] = [None] * len(self._buffers)  # each set's last device copy
        self._plan: Iterator[np.ndarray] = iter(plan)
        self._taken, self._first_step, self._waited = 0, first_step, 0.0
        self._pending: collections.deque[tuple[int, np.ndarray, int, Future]] = collections.deque()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="codaar-batches") if workers else None
        self._fill_ahead(self.depth)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def next(self, positions) -> dict[str, torch.Tensor]:
        """The batch of the next planned step; `positions` must be its planned clip positions."""
        started = time.perf_counter()
        try:
            if self._pool is None:
                step, planned, slot = self._take()
                self._check(step, planned, positions)
                batch, copied = self._fill(step, planned, slot, self._copied[slot])
            else:
                self._fill_ahead(self.depth + 1)  # the buffers of the batch before this one are free again
                if not self._pending:
                    self._take()  # raises: the plan has ended
                step, planned, slot, future = self._pending.popleft()
                self._check(step, planned, positions)
                batch, copied = future.result()
        finally:
            self._waited += time.perf_counter() - started
        self._copied[slot] = copied
        if copied is not None:  # the step's stream waits for the device copy on the device, not on the host
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for tensor in batch.values():
                tensor.record_stream(compute)  # allocated on the side stream, used on this one
        return batch

    def take_wait_seconds(self) -> float:
        """Seconds the main thread waited in `next` since the last call (the first: since the start)."""
        waited, self._waited = self._waited, 0.0
        return waited

    def close(self) -> None:
        """Stop gathering: batches not started are dropped, the ones being gathered finish first."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def _take(self) -> tuple[int, np.ndarray, int]:
        """The next planned batch: (its step, its positions, the buffer set it is gathered into)."""
        positions = next(self._plan, None)
        step = self._first_step + self._taken + 1
        if positions is None:
            raise BatchError(f"step {step}: the plan of batches has ended")
        slot = self._taken % len(self._buffers)
        self._taken += 1
        return step, np.asarray(positions), slot

    def _fill_ahead(self, count: int) -> None:
        """Start gathering planned batches on the workers until `count` are pending (or the plan ends)."""
        while self._pool is not None and len(self._pending) < count:
            try:
                step, positions, slot = self._take()
            except BatchError:
                return
            future = self._pool.submit(self._fill, step, positions, slot, self._copied[slot])
            self._pending.append((step, positions, slot, future))

    @staticmethod
    def _check(step: int, planned: np.ndarray, positions) -> None:
        if not np.array_equal(planned, positions):
            raise BatchError(f"step {step}: asked for other clips than the planned ones")

    def _fill(self, step: int, positions: np.ndarray, slot: int, last_copy: torch.cuda.Event | None):
        """Gather one batch into buffer set `slot` and move it to the device: (batch, the device copy's event)."""
        try:
            if last_copy is not None:
                last_copy.synchronize()  # the device copy that last read these buffers has finished
            host = self.gather.gather_into(positions, self._buffers[slot])
            if self._stream is None:
                return to_device(host, self.device, self.dtype), None
            with torch.cuda.stream(self._stream):
                batch = to_device(host, self.device, self.dtype)
                copied = torch.cuda.Event()
                copied.record(self._stream)
            return batch, copied
        except Exception as exc:
            thread = threading.current_thread()
            who = "the main thread" if thread is threading.main_thread() else f"data worker {thread.name}"
            raise BatchError(f"{who} failed to read the batch of step {step} ({len(positions)} clips): "
                             f"{type(exc).__name__}: {exc}") from exc


def _check_not_cut_short(array: np.ndarray, field: str) -> None:
    """A memory-mapped file truncated while it is mapped kills the process at the next read of a lost
    page (SIGBUS, no exception): compare the file's size now (the mapping's own descriptor, so a data
    set replaced by rename is still the one mapped) with what the array needs, and refuse first."""
    mapping = getattr(array, "_mmap", None)  # np.memmap's mmap object
    if mapping is None:
        return
    needed, size = array.offset + array.nbytes, mapping.size()
    if size < needed:
        raise DataFormatError(array.filename, field, f"{needed} bytes", f"{size}: the file was cut short while "
                              f"this run read it")


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
