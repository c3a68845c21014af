"""NVTX ranges: the named parts of a training step (`encoders`, `quantizer`, `cpc`, `decoders`,
`backward`, `optimizer`) in Nsight Systems timelines (`nsys profile -t cuda,nvtx ...`).

The `nvtx` package marks ranges on any machine; with no profiler attached a range costs well
under a microsecond, so the model and the trainer mark every step unconditionally.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import nvtx


def nvtx_range(name: str) -> AbstractContextManager[object]:
    """Mark the enclosed work as `name` (domain `codaar`) in a profiler's timeline."""
    return nvtx.annotate(name, domain="codaar")
