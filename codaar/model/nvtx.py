"""NVTX ranges for profiling: named regions in Nsight timelines, free when there is no GPU."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def nvtx_range(name: str) -> ContextManager[object]:
    """Mark the enclosed work as `name` in an Nsight timeline; a no-op without CUDA.

    torch.cuda.nvtx needs a CUDA build, so the CPU path must not touch it at all.
    """
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()
