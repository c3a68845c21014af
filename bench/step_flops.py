"""Floating-point operations of one quantizer step, per contestant: the saving of a fused kernel as a number.

Counted, not estimated, by `codaar.runtime.flops` (which the trainer also uses for its MFU): torch's
matrix products through `FlopCounterMode`, plus the dot products of every Triton kernel launched.
Elementwise work (exp, sqrt, the EMA) is not counted, on either side.

The benchmarks (bench_quantizer_step.py) count the contestants they time and print the counts at
the end of the run; `python -m profiles.quantizer_step_flops` counts every contestant of the
paper-shape step without timing them.
"""

from __future__ import annotations

from codaar.runtime.flops import count_flops, step_flops

__all__ = ["count_flops", "step_flops", "report", "summary_lines"]

REPORT: dict[str, tuple[int, int]] = {}  # "group: contestant" -> (forward FLOPs, forward + backward FLOPs)


def report(name: str, flops: tuple[int, int]) -> None:
    REPORT[name] = flops


def summary_lines() -> list[str]:
    if not REPORT:
        return []
    lines = ["dot-product FLOPs per call (forward / forward + backward):"]
    lines += [f"  {name}: {fwd / 1e9:.3f} / {total / 1e9:.3f} GFLOP" for name, (fwd, total) in REPORT.items()]
    return lines

