"""pytest-benchmark: assign_triton vs the eager assign_reference (CUDA only).

    python -m pytest bench/bench_assign.py --benchmark-only

Shapes: the paper's (M=3, N=800, K=800, D=256) and a scaled one (M=1, N=65536, K=8192, D=256).
Each timed call ends with torch.cuda.synchronize() so the kernel time is counted, not the launch.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("assign benchmarks need a CUDA device", allow_module_level=True)

from codaar_kernels.assign import assign_reference  # noqa: E402
from codaar_kernels.assign_triton import assign_triton  # noqa: E402

SHAPES = {"paper": (3, 800, 800, 256), "scaled": (1, 65536, 8192, 256)}


def _inputs(shape):
    M, N, K, D = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(M, N, D, device="cuda", generator=g)
    codebook = torch.randn(M, K, D, device="cuda", generator=g)
    return z, codebook


def _timed(fn, *args, **kw):
    def run():
        out = fn(*args, **kw)
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("impl", ["triton", "triton_tf32", "reference"])
def test_bench_assign(benchmark, shape, impl):
    z, codebook = _inputs(SHAPES[shape])
    if impl == "reference":
        fn = _timed(assign_reference, z, codebook)
    else:
        fn = _timed(assign_triton, z, codebook, allow_tf32=impl == "triton_tf32")
    fn()  # warm-up: compile + autotune outside the timing
    benchmark.group = f"assign-{shape}"
    idx, _ = benchmark(fn)
    if impl != "reference":
        ref_idx, _ = assign_reference(z, codebook)
        # random fp32 data: near-ties may legitimately differ in the last bit; nearly all agree
        assert (idx == ref_idx).float().mean() > 0.99
