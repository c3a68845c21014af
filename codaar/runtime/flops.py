"""What a step costs: its floating-point operations, counted, and the peak of the card it runs on.

Counted, not estimated: torch's matrix products and convolutions through `FlopCounterMode` (every
mm / bmm / addmm / baddbmm / convolution dispatched, forward and backward), plus the dot products of
every Triton kernel launched (each launch reports its own, at the real sizes:
codaar_kernels.utilities.launch). Elementwise work (exp, sqrt, the EMA) is not counted: it is a
rounding error beside the convolutions, and no card's peak counts it either.

MFU (model FLOPs utilisation, as nanoGPT reports it) = counted FLOPs per second / the card's peak
for the run's precision, from `PEAK_TFLOPS` (dense, no sparsity, the vendors' data sheets). A card
that is not in the table has no MFU: `peak_flops` returns None and the trainer says so.
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


# Dense peak TFLOP/s by precision: "bf16" (tensor cores), "tf32" (float32 convolutions and products
# on tensor cores: cuDNN's default for convolutions), "fp32" (tf32 switched off), "fp64".
# Matched against torch.cuda.get_device_name() by substring, the first entry that matches wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9, "fp64": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2, "fp64": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp64": 60.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9, "fp64": 66.9}),  # SXM
    ("GH200", {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9, "fp64": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6, "fp64": 1.4}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3, "fp64": 0.5}),
    ("A10G", {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2, "fp64": 1.0}),
)


def run_precision(dtype: torch.dtype, bf16_autocast: bool) -> str:
    """The precision whose peak bounds a run: bf16 under autocast, tf32 for float32 when cuDNN may use
    it (its default, and the convolutions are nearly all the FLOPs), else fp32; fp64 for float64."""
    if bf16_autocast:
        return "bf16"
    if dtype == torch.float64:
        return "fp64"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def peak_flops(device_name: str, precision: str) -> float | None:
    """The card's dense peak in FLOP/s for `precision`, or None for a card not in `PEAK_TFLOPS`."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return peaks[precision] * 1e12
    return None
