"""`--compile` and `--bf16`'s memory layout: what the trainer does to its model once, before training
(docs/design.md §9.1, §9.2).

`compile_regions` puts the model's three regions through torch.compile: the encoders (with the text
BiLSTM), CPC and the decoders (with their reconstruction losses). The quantizer between them stays
eager: it is ~0.02% of a step's FLOPs, already a handful of fused Triton kernels on a GPU, and its
host-side bookkeeping (`prepare_update` counts updates in a host integer) would make Dynamo
recompile it at every step. Each region is one graph (no graph break) that is compiled once and
reused at every later step: CPC reads t* from a device tensor, so no shape depends on it; the
LSTMs are traced (`DYNAMO_SETTINGS`); the NVTX ranges are nothing inside a traced region. A batch
of another size (an epoch's last, incomplete one) compiles each region once more, with dynamic
shapes, and that graph serves every later such batch.

Compiled dropout draws its masks with Inductor's own generator (seeded from torch's, which the
trainer reseeds every step), so a `--compile` run is reproducible and resumes exactly, but it is
not the eager run bit for bit; with dropout 0 its losses and gradients are the eager ones to
float32 rounding (tests/test_compile.py states the tolerance).

`video_channels_last` stores the video convolutions' weights channels_last and feeds them
channels_last activations: on CUDA, bf16 convolutions run on tensor cores in NHWC without a layout
transform per call. The trainer applies it under `--bf16` on CUDA.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from codaar.model.codaar_model import CoDAARModel
from codaar.model.decoders import SpatialVideoDecoder
from codaar.model.encoders import SpatialVideoProjection

REGIONS = ("_run_encoders", "_run_cpc", "_run_decoders")  # CoDAARModel's methods, in the order a step calls them
# Dynamo wraps no nn.LSTM by default (a graph break); the BiLSTM and CPC's LSTM trace to plain
# per-step operations with it.
DYNAMO_SETTINGS = {"allow_rnn": True}
# torch.compile's backend: CODAAR_COMPILE_BACKEND, else Inductor. The tests and `gpu_run.sh --dry-run`
# trace real steps with "aot_eager" (Dynamo and AOTAutograd: Inductor's graphs, guards and
# decompositions, without its code generation, which takes minutes on a CI CPU).
BACKEND_VARIABLE = "CODAAR_COMPILE_BACKEND"


def compile_backend() -> str:
    return os.environ.get(BACKEND_VARIABLE) or "inductor"


class CompileError(RuntimeError):
    """torch.compile cannot run on this platform (a one-line message naming the cause)."""


def accelerate(model: CoDAARModel, *, compile: bool = False, channels_last: bool = False) -> CoDAARModel:
    """Prepare `model` (on its device, in its dtype) for training: `--compile`, channels_last video
    convolutions. Call once, before the optimizer is built. Raises CompileError where torch.compile
    cannot run."""
    if channels_last:
        video_channels_last(model)
    if compile:
        compile_regions(model)
    return model


def compile_regions(model: CoDAARModel) -> None:
    """torch.compile the encoders, CPC and decoders of `model`, in place (its state_dict keys are
    unchanged; the quantizer stays eager). Compilation happens at the first step."""
    if model.compiled:
        return
    check_compilable(model.quantizer.codebook.device)
    for name in REGIONS:
        setattr(model, name, _traced(torch.compile(getattr(model, name), backend=compile_backend())))


def _traced(region: Callable) -> Callable:
    """The compiled region, traced (and guarded) with `DYNAMO_SETTINGS`, which Dynamo reads at tracing time."""

    @functools.wraps(region)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(**DYNAMO_SETTINGS):
            return region(*args, **kwargs)

    return call


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * 2 + 1


def check_compilable(device: torch.device) -> None:
    """Raise CompileError unless torch.compile (Dynamo + Inductor) compiles and runs on `device`:
    a Python Dynamo does not support, no C++ compiler (CPU), no working Triton (GPU)."""
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as exc:
        raise CompileError(f"--compile: {exc}") from None
    try:
        probe = torch.compile(_probe, backend=compile_backend(), fullgraph=True, dynamic=False)
        probe(torch.ones(4, device=device))
    except Exception as exc:  # whatever the backend raises: reported as one line, not a traceback
        raise CompileError(f"--compile: torch.compile cannot compile for {device.type} on this machine "
                           f"({_first_line(exc)}); run without --compile") from None


def _first_line(exc: BaseException) -> str:
    """The first informative line of a compiler error ("backend='inductor' raised:" says nothing)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not (line.startswith("backend=") and line.endswith("raised:"))]
    return (lines[0] if lines else type(exc).__name__)[:300]


def video_channels_last(model: CoDAARModel) -> None:
    """The spatial video encoder's and decoder's convolutions channels_last (weights and activations)."""
    for module in model.modules():
        if isinstance(module, (SpatialVideoProjection, SpatialVideoDecoder)):
            module.to(memory_format=torch.channels_last)
            module.channels_last = True
