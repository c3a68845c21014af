"""One training step of the quantizer (forward, backward of its losses, state update).

Contestants: our eager reference in float32 and float64, and the authors' formulation (one-hot
[N, K] float64 matmuls, Python loops over the batch and the codes; tests/authors_formulation.py).
Shape: the paper's (B=80 clips, T=10, three modalities, K=800, D=256).

    python -m pytest bench/bench_quantizer_step.py --benchmark-columns=mean,stddev,rounds

Ratios mean something when both sides ran in the same invocation on the same machine.
"""

from __future__ import annotations

import pytest
import torch

from authors_formulation import AuthorsState, authors_step
from codaar.quantizer import CrossModalQuantizer

PAPER = dict(batch=80, frames=10, num_codes=800, dim=256)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_quantizer(dtype: torch.dtype) -> CrossModalQuantizer:
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=PAPER["num_codes"], dim=PAPER["dim"]).to(DEVICE, dtype).train()
    gen = torch.Generator().manual_seed(1)
    quantizer.set_codebooks(torch.randn(3, PAPER["num_codes"], PAPER["dim"], generator=gen).to(DEVICE, dtype))
    return quantizer


def make_latents(dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    shape = (PAPER["batch"], PAPER["frames"], PAPER["dim"])
    return [torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_step_eager_reference(benchmark, dtype):
    quantizer = make_quantizer(dtype)
    latents = dict(zip(quantizer.modalities, make_latents(dtype)))

    def step():
        quantizer(latents).loss.backward()
        synchronize()

    benchmark.group = "quantizer step, paper shape"
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


def test_step_authors_formulation(benchmark):
    quantizer = make_quantizer(torch.float64)
    state = AuthorsState(quantizer)
    latents = make_latents(torch.float64)
    steps = iter(range(10**9))

    def step():
        out = authors_step(state, latents, quantizer.config, next(steps))
        (out["cmcm"] + sum(out["commit"])).backward()
        synchronize()

    benchmark.group = "quantizer step, paper shape"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
