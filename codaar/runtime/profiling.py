"""NVTX ranges: the named parts of a training step (`encoders`, `quantizer`, `cpc`, `decoders`,
`backward`, `optimizer`) in Nsight Systems timelines (`nsys profile -t cuda,nvtx ...`).

The `nvtx` package marks ranges on any machine, in the domain `codaar`; with no profiler attached a
range costs well under a microsecond, so the model and the trainer mark every step unconditionally.
Without the package (the GPU image has none, and `pip install --no-deps` brings none) the ranges
fall back to torch's own `torch.cuda.nvtx` on a CUDA build (no domain: the names read `codaar/<name>`),
and to nothing elsewhere. Inside a region that torch.compile traces a range is nothing either: a
context manager that calls into a C library would break the graph there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

try:
    import nvtx
except ImportError:  # optional: see the module docstring
    nvtx = None


def _torch_range(name: str) -> AbstractContextManager[object]:
    return torch.cuda.nvtx.range(f"codaar/{name}")


def _no_range(name: str) -> AbstractContextManager[object]:
    return nullcontext()


def _package_range(name: str) -> AbstractContextManager[object]:
    return nvtx.annotate(name, domain="codaar")


def _choose_backend() -> Callable[[str], AbstractContextManager[object]]:
    """The nvtx package, else torch's NVTX bindings where this torch has them (a CUDA build), else none."""
    if nvtx is not None:
        return _package_range
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, AttributeError):  # a CUDA build without NVTX support
            torch.cuda.nvtx.range_push("codaar/probe")
            torch.cuda.nvtx.range_pop()
            return _torch_range
    return _no_range


_backend: Callable[[str], AbstractContextManager[object]] | None = None


def nvtx_backend() -> str:
    """Which marks the ranges: "nvtx" (the package), "torch.cuda.nvtx" or "none"."""
    return {_package_range: "nvtx", _torch_range: "torch.cuda.nvtx", _no_range: "none"}[_resolved()]


def _resolved() -> Callable[[str], AbstractContextManager[object]]:
    global _backend
    if _backend is None:  # decided on first use: CUDA is not initialised at import
        _backend = _choose_backend()
    return _backend


def nvtx_range(name: str) -> AbstractContextManager[object]:
    """Mark the enclosed work as `name` (domain `codaar`) in a profiler's timeline."""
    if torch.compiler.is_compiling():
        return nullcontext()
    return _resolved()(name)
