"""One switch between the Triton kernels and the eager references, with the same signatures.

Backend `auto` (the default): CUDA tensors go to Triton, CPU tensors to the eager reference,
except under the Triton interpreter (TRITON_INTERPRET=1), where CPU tensors go to Triton too.
Inputs a kernel does not support (float64 state, say) fall back to the reference in `auto`.
`eager` and `triton` force a path (`triton` on CPU tensors needs TRITON_INTERPRET=1).
Set it with the CODAAR_BACKEND environment variable, `set_backend(name)` or `with use_backend(name):`.

The Triton modules are imported on first use: CPU-only users never pay for compiling them, and
the interpreter switch is read when they are (Triton reads it at decoration time).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Sequence

import torch

from .assign import assign_reference, assign_with_soft_usage_reference
from .dta_accumulate import dta_accumulate_reference
from .ema_csa_update import EmaCsaConfig, ema_csa_update_reference
from .utilities import interpreter_enabled

BACKENDS = ("auto", "eager", "triton")
_TRITON_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_backend = os.environ.get("CODAAR_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"CODAAR_BACKEND: expected one of {BACKENDS}, got {_backend!r}")


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _triton(module: str):
    return importlib.import_module(f"{__package__}.{module}")


def use_triton(*tensors: torch.Tensor, state_dtypes: Sequence[torch.dtype] = _TRITON_FLOATS) -> bool:
    """Whether this call runs the Triton kernel. `state_dtypes`: what the kernel accepts for tensors[0]."""
    on_device = tensors[0].is_cuda or interpreter_enabled()
    supported = on_device and all(t.dtype in state_dtypes for t in tensors if t.is_floating_point())
    if _backend == "eager":
        return False
    if _backend == "triton":
        if not on_device:
            raise RuntimeError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)")
        if not supported:
            raise TypeError(f"backend 'triton': no kernel for dtypes {[t.dtype for t in tensors]}")
        return True
    return supported


def _finite(z: torch.Tensor) -> torch.Tensor:
    """The kernels' input with non-finite entries as 0: their indices stay in range whatever a
    compiled (or interpreted) argmin does with NaN. The caller sees the batch is not finite (the
    quantizer skips its update and its losses are not finite); the eager references use torch's own
    NaN-propagating argmin and softmax."""
    return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def assign(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per frame: (idx [M, N] int64, min_dist [M, N])."""
    if use_triton(z, codebook):
        return _triton("assign_triton").assign_triton(_finite(z), codebook)
    return assign_reference(z.detach(), codebook)


def assign_with_soft_usage(
    z: torch.Tensor, codebook: torch.Tensor, frames_per_sample: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assignment plus DQA's per-sample soft usage [M, B, K] (differentiable w.r.t. z).

    Triton: two passes over the codebook, the first of which is the assignment (soft_usage_triton.py)."""
    if use_triton(z, codebook):
        return _triton("soft_usage_triton").assign_with_soft_usage_triton(_finite(z), codebook, frames_per_sample)
    return assign_with_soft_usage_reference(z, codebook, frames_per_sample)


def dta_accumulate(
    z: torch.Tensor, idx: torch.Tensor, num_codes: int, self_weight: float, cross_weight: float,
    *, deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DTA sums [M, K, D] and counts [M, K] (float32 from Triton, z's dtype from the reference)."""
    if use_triton(z):
        kernel = _triton("dta_accumulate_triton").dta_accumulate_triton
        return kernel(z, idx, num_codes, self_weight, cross_weight, deterministic=deterministic)
    return dta_accumulate_reference(z, idx, num_codes, self_weight, cross_weight)


def ema_csa_update(
    codebook: torch.Tensor,
    ema_sum: torch.Tensor,
    ema_count: torch.Tensor,
    unused_steps: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    config: EmaCsaConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA + Laplace smoothing + count floor + E = W / C + CSA + dead-code counters, in place, any
    number of modalities (see ema_csa_update.py); returns the (dead, active) masks [K]."""
    args = (codebook, ema_sum, ema_count, unused_steps, sums, counts, config)
    if use_triton(codebook, state_dtypes=(torch.float32, torch.float64)):
        return _triton("ema_csa_update_triton").ema_csa_update_triton(*args)
    return ema_csa_update_reference(*args)
