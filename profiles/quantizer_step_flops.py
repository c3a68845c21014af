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

from bench.bench_quantizer_step import SHAPES, authors_forward, make_latents, make_quantizer, ours_forward  # noqa: E402
from bench.step_flops import report, step_flops, summary_lines  # noqa: E402


def main() -> None:
    torch.set_flush_denormal(True)
    shape = SHAPES["paper"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for contestant in ("triton", "eager-fp32", "authors"):
        dtype = torch.float64 if contestant == "authors" else torch.float32
        quantizer, latents = make_quantizer(shape, dtype, device), make_latents(shape, dtype, device)
        if contestant == "authors":
            forward = authors_forward(quantizer, latents)
            backward = lambda out: (out["cmcm"] + sum(out["commit"])).backward()  # noqa: E731
        else:
            forward = ours_forward(quantizer, latents, "triton" if contestant == "triton" else "eager")
            backward = lambda out: out.loss.backward()  # noqa: E731
        report(f"quantizer step, paper shape: {contestant}", step_flops(forward, backward))
    print("\n".join(summary_lines()))


if __name__ == "__main__":
    main()
