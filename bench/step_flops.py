"""Floating-point operations of one quantizer step, per contestant: the saving of a fused kernel as a number.

Counted, not estimated: torch's matrix products through `FlopCounterMode` (every mm / bmm / addmm /
baddbmm dispatched, forward and backward), plus the dot products of every Triton kernel launched
(each launch reports its own, at the real sizes: codaar_kernels.utilities.launch). Elementwise work
(exp, sqrt, the EMA) is not counted, on either side.

The benchmarks (bench_quantizer_step.py) count the contestants they time and print the counts at
the end of the run; `python -m profiles.quantizer_step_flops` counts every contestant of the
paper-shape step without timing them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from codaar_kernels import utilities


def _matmul_add_flops(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
    """(b)addmm_: 2 x the product's multiply-adds (a [..., n, k] x b [..., k, m])."""
    *batch, rows, inner = a_shape
    count = 2 * rows * inner * b_shape[-1]
    for size in batch:
        count *= size
    return count


# torch's counter knows addmm and baddbmm but not their in-place forms, which the eager distances use
_IN_PLACE = {torch.ops.aten.addmm_: _matmul_add_flops, torch.ops.aten.baddbmm_: _matmul_add_flops}

REPORT: dict[str, tuple[int, int]] = {}  # "group: contestant" -> (forward FLOPs, forward + backward FLOPs)


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """(dot-product FLOPs of one call of `fn`, its result)."""
    with FlopCounterMode(display=False, custom_mapping=_IN_PLACE) as torch_ops, \
            utilities.record_launches(run=True) as launches:
        result = fn()
    return torch_ops.get_total_flops() + sum(launch.flops for launch in launches), result


def step_flops(forward: Callable[[], object], backward: Callable[[object], None]) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) of one step `backward(forward())`."""
    forward_flops, out = count_flops(forward)
    backward_flops, _ = count_flops(lambda: backward(out))
    return forward_flops, forward_flops + backward_flops


def report(name: str, flops: tuple[int, int]) -> None:
    REPORT[name] = flops


def summary_lines() -> list[str]:
    if not REPORT:
        return []
    lines = ["dot-product FLOPs per call (forward / forward + backward):"]
    lines += [f"  {name}: {fwd / 1e9:.3f} / {total / 1e9:.3f} GFLOP" for name, (fwd, total) in REPORT.items()]
    return lines

