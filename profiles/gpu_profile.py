"""On a CUDA machine: the scaled assign against a bare cuBLAS GEMM of the same shape, the paper-shape
quantizer step (Triton vs eager, and Triton captured in a CUDA graph), and a torch.profiler capture of that
step with its NVTX ranges, summarised as a table of the top kernels.

    python -m profiles.gpu_profile OUT_DIR      (normally run by profiles/gpu_run.sh)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import codaar_kernels as ops
from bench.bench_quantizer_step import SHAPES, graphed_step, make_latents, make_quantizer
from codaar_kernels.assign_triton import assign_triton


def main(out: Path) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("profiles/gpu_profile.py needs a CUDA device")
    print(f"# GPU profile: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")

    frames, codes, dim = 65536, 8192, 256
    z = torch.randn(1, frames, dim, device="cuda")
    codebook = torch.randn(1, codes, dim, device="cuda")
    rows = []
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        gemm = do_bench(lambda: torch.mm(z[0], codebook[0].T), quantiles=[0.5])
        ours = do_bench(lambda tf32=tf32: assign_triton(z, codebook, allow_tf32=tf32), quantiles=[0.5])
        rows.append((("tf32" if tf32 else "fp32"), gemm, ours))
    torch.backends.cuda.matmul.allow_tf32 = False
    print("## Scaled assign (N=65,536, K=8,192, D=256, one modality) vs a bare GEMM of the same shape\n")
    print("| precision | cuBLAS GEMM (ms) | assign_triton (ms) | ratio |\n|---|---|---|---|")
    for name, gemm, ours in rows:
        print(f"| {name} | {gemm:.3f} | {ours:.3f} | {ours / gemm:.2f} |")

    shape = SHAPES["paper"]
    timings = {}
    for backend in ("triton", "eager"):
        quantizer = make_quantizer(shape, torch.float32)
        latents = dict(zip(quantizer.modalities, make_latents(shape, torch.float32)))

        def step(backend=backend, quantizer=quantizer, latents=latents):  # bound now: do_bench calls it here
            with ops.use_backend(backend):
                quantizer(latents).loss.backward()

        timings[backend] = do_bench(step, quantiles=[0.5])
    quantizer = make_quantizer(shape, torch.float32)
    timings["triton, CUDA graph"] = do_bench(graphed_step(quantizer, dict(zip(quantizer.modalities, make_latents(
        shape, torch.float32)))), quantiles=[0.5])
    print("\n## Paper-shape quantizer step (B=80, T=10, M=3, K=800, D=256), forward + backward + update\n")
    print("| backend | ms per step |\n|---|---|")
    for backend, ms in timings.items():
        print(f"| {backend} | {ms:.3f} |")

    quantizer = make_quantizer(shape, torch.float32)
    latents = dict(zip(quantizer.modalities, make_latents(shape, torch.float32)))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            with ops.use_backend("triton"), torch.cuda.nvtx.range("quantizer_step"):
                quantizer(latents).loss.backward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
    (out / "profile.md").write_text("```\n" + table + "\n```\n")
    print("\nTop kernels of 5 Triton-backend steps: profile.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
