"""Checkpoints off the training's critical path: the trainer's one call per step.

`CheckpointWriter.after_step(step, state)` does, on the steps a checkpoint is due:
  1. one bulk copy of the whole state to the host: the tensors of each dtype are concatenated on
     their device (one kernel) and copied into a reused host buffer (pinned on CUDA, asynchronous,
     an event marks its end), so the next step's in-place updates cannot reach the snapshot;
  2. writing, hashing and rotating in a background thread (`checkpoint.write_checkpoint`), at most
     one in flight: a checkpoint due while the previous one is still being written waits for it.
On every step it first raises a failed background write (`CheckpointError` naming the checkpoint
and the cause), so a run never goes on for long believing it is saved. `close()` is the run's
exit: it waits for the write in flight and raises its failure.

The guarantees of `checkpoint` are unchanged: the checkpoint appears whole or not at all and
`latest` moves after it, so kill -9 at any moment (also during a background write) leaves `latest`
naming a complete checkpoint; the bytes written are the state's bytes, so a resume is bit-exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from codaar.run_folder import checkpoint as ckpt
from codaar.runtime.outputs import os_error_line


class CheckpointWriter:
    def __init__(self, run_dir: Path, every: int, last_step: int, keep: int = 2, enabled: bool = True):
        """Checkpoints of `run_dir` every `every` steps and at `last_step`, the newest `keep` kept;
        `enabled=False` (ranks other than the main one) writes nothing."""
        self.run_dir, self.every, self.last_step = Path(run_dir), every, last_step
        self.keep, self.enabled = keep, enabled
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._buffers: dict[torch.dtype, torch.Tensor] = {}  # reused between checkpoints
        self.written: list[Path] = []  # the folders written, in order

    def due(self, step: int) -> bool:
        """Whether the state after `step` is checkpointed."""
        return self.enabled and (step % self.every == 0 or step == self.last_step)

    def after_step(self, step: int, state: Callable[[], tuple[Mapping[str, torch.Tensor], dict]]) -> None:
        """Raise a failed background write; when a checkpoint is due after `step`, snapshot
        `state()` (tensors, JSON metadata) and write it in the background."""
        self.raise_failure()
        if self.due(step):
            tensors, meta = state()
            self.submit(step, tensors, meta)

    def submit(self, step: int, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
        """Snapshot `tensors` now and write the checkpoint of `step` in the background."""
        self.wait()  # at most one write in flight; its buffers are free again after it
        self.raise_failure()
        layout, buffers, ready = self._snapshot(tensors)
        self._thread = threading.Thread(target=self._write, args=(step, layout, buffers, ready, meta),
                                        name=f"codaar checkpoint step {step}")
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight, if any (its failure stays for `raise_failure`)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        """The run's exit: wait for the write in flight, then raise its failure, if it failed."""
        self.wait()
        self.raise_failure()

    # ------------------------------------------------------------------------------ internals
    def _snapshot(self, tensors: Mapping[str, torch.Tensor]):
        """(layout, host buffers, CUDA events): the state's bytes, one buffer per dtype; the events
        mark the end of the copies on each device's current stream."""
        layout, buffers, cuda_devices = [], [], {}
        for dtype, names in ckpt.group_by_dtype(tensors):
            parts = [tensors[name].detach() for name in names]
            numel = sum(p.numel() for p in parts)
            on_cuda = any(p.is_cuda for p in parts)
            buffer = self._buffers.get(dtype)
            if buffer is None or buffer.numel() != numel or buffer.is_pinned() != on_cuda:
                buffer = self._buffers[dtype] = torch.empty(numel, dtype=dtype, pin_memory=on_cuda)
            offset = 0
            for device in dict.fromkeys(p.device for p in parts):  # the parts of one device lie together
                group = [p.reshape(-1) for p in parts if p.device == device]
                size = sum(g.numel() for g in group)
                target = buffer[offset : offset + size]
                if device.type == "cpu":
                    torch.cat(group, out=target)
                else:  # one kernel gathers them on the device, one copy brings them over
                    target.copy_(torch.cat(group), non_blocking=True)
                    cuda_devices[device] = True
                offset += size
            buffers.append(buffer)
            layout += [(name, dtype, tuple(tensors[name].shape)) for name in names]
        ready = []
        for device in cuda_devices:  # (--device cuda:1 copies on cuda:1's stream, whatever the current device)
            with torch.cuda.device(device):
                ready.append(torch.cuda.Event())
                ready[-1].record()
        return layout, buffers, ready

    def _write(self, step, layout, buffers, ready, meta) -> None:
        try:
            for event in ready:
                event.synchronize()
            self.written.append(ckpt.write_checkpoint(self.run_dir, step, layout, buffers, meta, self.keep))
        except BaseException as exc:  # reported to the training thread at its next step
            # an OSError as the path and the cause in words (step-0000002/tensors.safetensors: no space
            # left on the device (ENOSPC)); anything else by its type and message
            reason = os_error_line(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            self._failure = ckpt.CheckpointError(f"{self.run_dir / 'checkpoints'}: the checkpoint of step {step} "
                                                 f"could not be written ({reason}); the run stopped, its last "
                                                 f"complete checkpoint is the one `latest` names")
