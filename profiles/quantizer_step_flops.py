"""The dot-product FLOPs of one paper-shape quantizer step, for every contestant of
bench/bench_quantizer_step.py, counted without timing them; Triton included on a machine without a
GPU (under the Triton interpreter: slow, about a minute, but the count is that of the compiled
kernels, which run the same launches):

    python -m profiles.quantizer_step_flops
"""

from __future__ import annotations

import os

import torch

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: it reads this then

from bench.bench_quantizer_step import (
    SHAPES,
    authors_backward,
    authors_forward,
    make_latents,
    make_quantizer,
    ours_backward,
    ours_forward,
)
from bench.step_flops import report, step_flops, summary_lines


def main() -> None:
    torch.set_flush_denormal(True)
    shape = SHAPES["paper"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for contestant in ("triton", "eager-fp32", "authors"):
        dtype = torch.float64 if contestant == "authors" else torch.float32
        quantizer, latents = make_quantizer(shape, dtype, device), make_latents(shape, dtype, device)
        if contestant == "authors":
            forward, backward = authors_forward(quantizer, latents), authors_backward
        else:
            forward = ours_forward(quantizer, latents, "triton" if contestant == "triton" else "eager")
            backward = ours_backward
        report(f"quantizer step, paper shape: {contestant}", step_flops(forward, backward))
    print("\n".join(summary_lines()))


if __name__ == "__main__":
    main()
