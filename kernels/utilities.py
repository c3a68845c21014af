"""What every Triton launcher shares: where the kernels run, one way to check inputs, one way to launch.

- `interpreter_enabled()`: TRITON_INTERPRET=1, the kernels run in numpy on the CPU (tests' CI). Triton
  reads it when a kernel is decorated, so it must be set before the Triton modules are imported
  (tests/conftest.py decides it for the test suite).
- `require(...)` / `check_tensor(...)`: bad input raises naming the launcher, the argument and what
  was expected; nothing is cast or copied silently.
- `launch(kernel, grid, ...)` runs `kernel[grid](...)`, or, inside `record_launches()`, records the
  call instead of running it. Recording lets the exact launches of production be compiled ahead of
  time for a GPU that is not there (codaar_kernels.ahead_of_time): the launchers run on CPU tensors of
  the real shapes and dtypes, and every configuration they pick is captured as it would be launched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Launch", "check_runs_here", "check_tensor", "interpreter_enabled", "launch", "record_launches",
           "recording", "require", "triton_device"]


def interpreter_enabled() -> bool:
    """True under the Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors, in numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_device() -> str:
    """Where Triton kernels take their tensors: "cpu" under the interpreter, else "cuda"."""
    return "cpu" if interpreter_enabled() else "cuda"


def require(condition: bool, where: str, message: str, error: type[Exception] = ValueError) -> None:
    """Raise `error(f"{where}: {message}")` unless `condition`."""
    if not condition:
        raise error(f"{where}: {message}")


def check_tensor(
    tensor: torch.Tensor,
    where: str,
    name: str,
    *,
    shape: Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    contiguous: bool = False,
) -> None:
    """One input check for every launcher: shape (ValueError), dtype (TypeError), device and layout."""
    if shape is not None:
        require(tuple(tensor.shape) == tuple(shape), where,
                f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if dtypes is not None:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        allowed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        require(tensor.dtype in dtypes, where, f"{name} must be {allowed}, got {tensor.dtype}", TypeError)
    if device is not None:
        require(tensor.device == device, where, f"{name} is on {tensor.device}, expected {device}")
    if contiguous:
        require(tensor.is_contiguous(), where, f"{name} must be contiguous")


def check_runs_here(tensor: torch.Tensor, where: str) -> None:
    """Triton kernels take CUDA tensors (CPU tensors under the interpreter, or while recording)."""
    ok = tensor.device.type == "cuda" or interpreter_enabled() or recording()
    require(ok, where, f"Triton kernels need CUDA tensors (got {tensor.device}); "
                       "set TRITON_INTERPRET=1 before importing triton to run them on the CPU", RuntimeError)


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: `kernel[grid](*args, **kwargs)` (kernel may be an autotuner), and
    the floating-point operations of its dot products (2 per multiply-add, at the real sizes)."""

    kernel: Any
    grid: Any
    args: tuple
    kwargs: dict
    flops: int = 0


_recorded: list[Launch] | None = None
_run_recorded = False


def recording() -> bool:
    """True while launches are recorded instead of run."""
    return _recorded is not None and not _run_recorded


@contextlib.contextmanager
def record_launches(run: bool = False) -> Iterator[list[Launch]]:
    """Record every launch made while the block runs; `run=False` (default): instead of running it
    (outputs stay unwritten), `run=True`: as well as running it (to count a step's FLOPs, say)."""
    global _recorded, _run_recorded
    previous = _recorded, _run_recorded
    _recorded, _run_recorded = [], run
    try:
        yield _recorded
    finally:
        _recorded, _run_recorded = previous


def launch(kernel: Any, grid: Any, *args: Any, flops: int = 0, **kwargs: Any) -> None:
    """`kernel[grid](*args, **kwargs)`, or record it (see `record_launches`). `flops`: the dot-product
    work of the launch, for the record."""
    if _recorded is not None:
        _recorded.append(Launch(kernel, grid, args, kwargs, int(flops)))
    if _recorded is None or _run_recorded:
        kernel[grid](*args, **kwargs)
