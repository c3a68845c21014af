"""One training step of the quantizer (forward, backward of its losses, state update), and its
training-mode forward alone (assignment, losses, state update).

Contestants: `triton` (our kernels; CUDA only), `triton-graph` (the same step captured in a CUDA
graph and replayed: no launch overhead; CUDA only), our eager reference in float32 and float64, and
`authors`: the step written the authors' way in float64 (one-hot [N, K] float64 matmuls, Python
loops over the batch and the codes; tests/authors_formulation.py).
Shapes: the paper's (B=80 clips, T=10, three modalities, K=800, D=256) and a scaled one
(N = 65,540 frames, K = 8,192; CUDA only, and without the authors' contestant, whose per-clip
Python loop and 4 GB one-hot matrices make a single step take minutes).

    python -m pytest bench/bench_quantizer_step.py --benchmark-columns=mean,stddev,rounds

`test_forward_speedup` times our float32 forward and the authors' float64 one alternately, call
for call in the same rounds (other load on the machine hits both alike), and prints the ratio of
the medians. Every contestant's dot-product FLOPs per call are printed at the end of the run
(bench/step_flops.py). Denormals are flushed, as the trainer does: without it the steps after the
first updates run up to 30x slower for every contestant.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import codaar_kernels as ops
from bench.step_flops import count_flops, report, step_flops
from codaar.quantizer import CrossModalQuantizer
from codaar.train.graph_step import capture_graph, run_on_stream
from tests.authors_formulation import AuthorsState, authors_step

SHAPES = {"paper": dict(batch=80, frames=10, num_codes=800, dim=256),
          "scaled": dict(batch=6554, frames=10, num_codes=8192, dim=256)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("flush_denormals")


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_quantizer(shape: dict, dtype: torch.dtype, device: str = DEVICE) -> CrossModalQuantizer:
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=shape["num_codes"], dim=shape["dim"]).to(device, dtype).train()
    gen = torch.Generator().manual_seed(1)
    quantizer.set_codebooks(torch.randn(3, shape["num_codes"], shape["dim"], generator=gen).to(device, dtype))
    return quantizer


def make_latents(shape: dict, dtype: torch.dtype, device: str = DEVICE) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    size = (shape["batch"], shape["frames"], shape["dim"])
    return [torch.randn(size, generator=gen).to(device, dtype).requires_grad_() for _ in range(3)]


def authors_forward(quantizer: CrossModalQuantizer, latents: list[torch.Tensor]):
    """A callable running the authors' forward (their state update included), one step per call."""
    state = AuthorsState(quantizer)
    steps = iter(range(10**9))
    return lambda: authors_step(state, latents, quantizer.config, next(steps))


def authors_backward(out: dict) -> None:
    """The backward of `authors_forward`'s output: its CMCM loss and commitment terms."""
    (out["cmcm"] + sum(out["commit"])).backward()


def ours_backward(out) -> None:
    out.loss.backward()


def ours_forward(quantizer: CrossModalQuantizer, latents: list[torch.Tensor], backend: str):
    named = dict(zip(quantizer.modalities, latents))

    def forward():
        with ops.use_backend(backend):
            return quantizer(named)

    return forward


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


def skip_unless_runnable(contestant: str, shape_name: str) -> None:
    if contestant.startswith("triton") and DEVICE != "cuda":
        pytest.skip("the Triton contestants need a CUDA device")
    if shape_name == "scaled" and DEVICE != "cuda":
        pytest.skip("the scaled shape needs a CUDA device")


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("contestant", ["triton-graph", "triton", "eager-fp32", "eager-fp64"])
def test_step_codaar(benchmark, contestant, shape_name):
    skip_unless_runnable(contestant, shape_name)
    shape = SHAPES[shape_name]
    dtype = torch.float64 if contestant == "eager-fp64" else torch.float32
    quantizer = make_quantizer(shape, dtype)
    latents = make_latents(shape, dtype)
    forward = ours_forward(quantizer, latents, "eager" if contestant.startswith("eager") else "triton")
    group = f"quantizer step, {shape_name} shape"
    # counted on the plain step: a graph replays the same launches (and hides them from a counter)
    report(f"{group}: {contestant}", step_flops(forward, lambda out: out.loss.backward()))

    replay = graphed_step(quantizer, dict(zip(quantizer.modalities, latents))) if contestant == "triton-graph" else None

    def step():
        if replay is not None:
            replay()
        else:
            forward().loss.backward()
        synchronize()

    step()  # warm-up: compile and autotune outside the timing
    benchmark.group = group
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


def test_step_authors_formulation(benchmark):
    shape = SHAPES["paper"]
    quantizer = make_quantizer(shape, torch.float64)
    forward = authors_forward(quantizer, make_latents(shape, torch.float64))
    group = "quantizer step, paper shape"
    report(f"{group}: authors", step_flops(forward, authors_backward))

    def step():
        authors_backward(forward())
        synchronize()

    benchmark.group = group
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("contestant", ["triton", "eager-fp32", "authors"])
def test_forward(benchmark, contestant):
    """One training-mode forward (assignment, losses, state update), no backward."""
    skip_unless_runnable(contestant, "paper")
    shape = SHAPES["paper"]
    dtype = torch.float64 if contestant == "authors" else torch.float32
    quantizer = make_quantizer(shape, dtype)
    latents = make_latents(shape, dtype)
    if contestant == "authors":
        forward = authors_forward(quantizer, latents)
    else:
        forward = ours_forward(quantizer, latents, "triton" if contestant == "triton" else "eager")
    group = "quantizer forward (training mode), paper shape"
    flops, _ = count_flops(forward)
    report(f"{group}: {contestant}", (flops, flops))

    def call():
        forward()
        synchronize()

    call()
    benchmark.group = group
    benchmark.pedantic(call, rounds=3 if contestant == "authors" else 10, warmup_rounds=1)


def test_forward_speedup(benchmark, capsys):
    """Our float32 eager forward vs the authors' float64 one, alternating call for call."""
    shape = SHAPES["paper"]
    ours = ours_forward(make_quantizer(shape, torch.float32), make_latents(shape, torch.float32), "eager")
    theirs = authors_forward(make_quantizer(shape, torch.float64), make_latents(shape, torch.float64))
    times = {"ours": [], "authors": []}

    def one_round():
        for name, fn in (("ours", ours), ("authors", theirs)):
            started = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - started)

    one_round()  # warm-up, not kept
    times = {"ours": [], "authors": []}
    benchmark.group = "quantizer forward (training mode), paper shape: ours fp32 vs authors fp64, alternating"
    benchmark.pedantic(one_round, rounds=15)
    ours_s, authors_s = statistics.median(times["ours"]), statistics.median(times["authors"])
    benchmark.extra_info.update(ours_ms=ours_s * 1e3, authors_ms=authors_s * 1e3, speedup=authors_s / ours_s)
    with capsys.disabled():
        print(f"\nforward, paper shape, {len(times['ours'])} alternating rounds: ours (float32, {DEVICE}) "
              f"{ours_s * 1e3:.1f} ms, authors (float64) {authors_s * 1e3:.1f} ms (medians): "
              f"{authors_s / ours_s:.2f}x")
