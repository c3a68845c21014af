"""One training step of the quantizer (forward, backward of its losses, state update).

Contestants: `triton` (our kernels; CUDA only), `triton-graph` (the same step captured in a CUDA
graph and replayed: no launch overhead; CUDA only), our eager reference in float32 and float64, and
`authors`: the step written the authors' way (one-hot [N, K] float64 matmuls, Python loops over
the batch and the codes; tests/authors_formulation.py).
Shapes: the paper's (B=80 clips, T=10, three modalities, K=800, D=256) and a scaled one
(N = 65,536 frames, K = 8,192; CUDA only, and without the authors' contestant, whose per-clip
Python loop and 4 GB one-hot matrices make a single step take minutes).

    python -m pytest bench/bench_quantizer_step.py --benchmark-columns=mean,stddev,rounds

Ratios mean something when both sides ran in the same invocation on the same machine.
"""

from __future__ import annotations

import pytest
import torch

import codaar_kernels as ops
from authors_formulation import AuthorsState, authors_step
from codaar.train.graph_step import capture_graph, run_on_stream
from codaar.quantizer import CrossModalQuantizer

SHAPES = {"paper": dict(batch=80, frames=10, num_codes=800, dim=256),
          "scaled": dict(batch=6554, frames=10, num_codes=8192, dim=256)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_quantizer(shape: dict, dtype: torch.dtype) -> CrossModalQuantizer:
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=shape["num_codes"], dim=shape["dim"]).to(DEVICE, dtype).train()
    gen = torch.Generator().manual_seed(1)
    quantizer.set_codebooks(torch.randn(3, shape["num_codes"], shape["dim"], generator=gen).to(DEVICE, dtype))
    return quantizer


def make_latents(shape: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    size = (shape["batch"], shape["frames"], shape["dim"])
    return [torch.randn(size, generator=gen).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


def graphed_step(quantizer: CrossModalQuantizer, latents: dict[str, torch.Tensor]):
    """The quantizer's training step (forward, backward, update) captured in a CUDA graph: returns
    a callable that replays it. The quantizer runs `capturable`; its host-side bookkeeping (seeding
    the reset generator) happens before each replay, and that generator is registered with the graph."""
    quantizer.capturable = True

    def body():
        with ops.use_backend("triton"):
            quantizer(latents).loss.backward()

    stream = torch.cuda.Stream()
    for _ in range(3):  # warm-up: compile, autotune, allocate
        quantizer.prepare_update()
        run_on_stream(stream, body)
    quantizer.prepare_update()
    graph, _ = capture_graph(body, stream, [quantizer.reset_rng])

    def replay():
        quantizer.prepare_update()
        graph.replay()

    return replay


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton-graph", "triton", "eager-fp32", "eager-fp64"])
def test_step_codaar(benchmark, contestant, shape_name):
    if contestant.startswith("triton") and DEVICE != "cuda":
        pytest.skip("the Triton contestants need a CUDA device")
    if shape_name == "scaled" and DEVICE != "cuda":
        pytest.skip("the scaled shape needs a CUDA device")
    shape = SHAPES[shape_name]
    dtype = torch.float64 if contestant == "eager-fp64" else torch.float32
    quantizer = make_quantizer(shape, dtype)
    latents = dict(zip(quantizer.modalities, make_latents(shape, dtype)))

    replay = graphed_step(quantizer, latents) if contestant == "triton-graph" else None

    def step():
        if replay is not None:
            replay()
        else:
            with ops.use_backend("triton" if contestant == "triton" else "eager"):
                quantizer(latents).loss.backward()
        synchronize()

    step()  # warm-up: compile and autotune outside the timing
    benchmark.group = f"quantizer step, {shape_name} shape"
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


def test_step_authors_formulation(benchmark):
    shape = SHAPES["paper"]
    quantizer = make_quantizer(shape, torch.float64)
    state = AuthorsState(quantizer)
    latents = make_latents(shape, torch.float64)
    steps = iter(range(10**9))

    def step():
        out = authors_step(state, latents, quantizer.config, next(steps))
        (out["cmcm"] + sum(out["commit"])).backward()
        synchronize()

    benchmark.group = "quantizer step, paper shape"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
