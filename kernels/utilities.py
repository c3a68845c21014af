"""What every Triton launcher shares: where the kernels run, one way to check inputs, one way to launch.

- `interpreter_enabled()`: TRITON_INTERPRET=1, the kernels run in numpy on the CPU (tests' CI). Triton
  reads it when a kernel is decorated, so it must be set before the Triton modules are imported
  (tests/conftest.py decides it for the test suite).
- `require(...)` / `check_tensor(...)`: bad input raises naming the launcher, the argument and what
  was expected. The launchers cast nothing (a wrong dtype is refused; kernels that take several
  dtypes convert in registers) and copy nothing: inputs are read through their strides (views,
  transposes, expanded tensors); what a kernel needs contiguous (outputs, EMA+CSA's tensors) is
  refused otherwise, and its module docstring says why.
  `check_int32_offsets(...)`: the kernels address one modality with int32 offsets.
- `launch_device(where, ...)`: the one device of a launcher's tensors (others are refused), made CUDA's
  current device while the launcher allocates and launches, as flash-attn's launchers do with
  `torch.cuda.device(x.device.index)`: Triton launches on (and autotunes on, and takes the stream of)
  the current device, so tensors on cuda:1 in a process whose current device is cuda:0 would
  otherwise get their kernels on cuda:0.
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

__all__ = ["Launch", "check_int32_offsets", "check_runs_here", "check_tensor", "interpreter_enabled", "launch",
           "launch_device", "record_launches", "recording", "require", "triton_device"]


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


def check_int32_offsets(where: str, **tensors: torch.Tensor) -> None:
    """The kernels address one modality of an [M, ...] tensor (its dims after the first, through its
    strides) with int32 offsets, and the modality itself with an int64 one: refuse a modality whose
    farthest element is past int32 (a slice of a huge tensor can be, whatever its own size)."""
    for name, tensor in tensors.items():
        farthest = sum(max(size - 1, 0) * stride for size, stride in zip(tensor.shape[1:], tensor.stride()[1:]))
        require(farthest < 2**31, where, f"{name} {tuple(tensor.shape)} with strides {tensor.stride()}: one "
                                         f"modality reaches element {farthest}, past int32 indexing")


@contextlib.contextmanager
def launch_device(where: str, **tensors: torch.Tensor) -> Iterator[torch.device]:
    """Refuse tensors on different devices (naming them); run the block with their device as CUDA's
    current one (`torch.cuda.device(index)`; nothing to enter for CPU tensors). Yields the device."""
    (first, tensor), *others = tensors.items()
    device = tensor.device
    for name, other in others:
        require(other.device == device, where, f"{name} is on {other.device}, expected {device} (where {first} is)")
    check_runs_here(tensor, where)
    with torch.cuda.device(device.index) if device.type == "cuda" else contextlib.nullcontext():
        yield device


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
