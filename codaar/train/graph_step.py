"""The training step captured in a CUDA graph (`python -m codaar.train --cuda-graph`).

A replay launches the whole step (encoders, quantizer, CPC, decoders, backward, clipping, Adam)
as one graph: no Python and no launch overhead per operation, which is most of a small step's time
on a GPU. Capture needs a step with fixed shapes that reads everything that changes between steps
from device memory, and that never waits for the host:
  - the batch is copied into fixed input buffers before each replay;
  - the model's host-side work happens before each replay, in `CoDAARModel.prepare_step`: CPC's t*
    is drawn as in the ordinary step and written to a device tensor (`CrossModalCPC` then picks the
    LSTM output at t* by index instead of slicing), and the quantizer, in `capturable` mode, seeds
    its dead-code reset generator for the update; that generator is registered with the graph;
  - the learning rate is a device tensor of a capturable Adam; Dropout draws from torch's default
    CUDA generator, reseeded every step by the trainer as before; graphs read its seed and offset at
    each replay.
The first `warmup` steps run the same function eagerly on the capture stream (lazy initialisation
(cuBLAS handles, Triton compilation, Adam's state) cannot happen inside a capture); the next step
is captured once and every later step replays it. A batch of another shape (an epoch's last,
incomplete batch) runs eagerly.

With `capture=False` the same fixed-shape step runs eagerly every time, on any device: the CPU
tests check that way that it computes what the ordinary step computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

StepOutputs = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def make_adam_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Learning rates as device tensors and step counts on the device: Adam's update then never
    reads a value back to the host, and a new learning rate reaches a captured graph."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """A device-tensor learning rate (capturable Adam) is written in place, so a graph reads it."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def run_on_stream(stream: torch.cuda.Stream, fn: Callable[[], object]) -> object:
    """fn() on `stream`, after the current stream's queued work and before its later work. Warm-up
    steps run on the stream that will capture: CUDA's lazy per-stream state is then ready."""
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        result = fn()
    current.wait_stream(stream)
    return result


def capture_graph(fn: Callable[[], object], stream: torch.cuda.Stream,
                  generators: Sequence[torch.Generator] = ()) -> tuple[torch.cuda.CUDAGraph, object]:
    """Capture fn() on `stream`: (the graph, what fn returned, rewritten by every replay).
    Draws from `generators` inside the graph follow how they are seeded before each replay."""
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    torch.cuda.synchronize(stream.device)
    with torch.cuda.graph(graph, stream=stream):
        result = fn()
    return graph, result


class GraphedTrainStep:
    """Runs `optimize(batch, cpc_t_star=...)` (one optimisation step; returns tensors only) as a
    CUDA graph: eager for `warmup` steps, then captured once and replayed."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 optimize: Callable[..., StepOutputs], *, capture: bool = True, warmup: int = 3) -> None:
        self.device = next(model.parameters()).device
        if capture and self.device.type != "cuda":
            raise ValueError(f"GraphedTrainStep: capturing a CUDA graph needs a model on CUDA, not {self.device}")
        self.model = model
        self.optimize = optimize
        self.capture, self.warmup = capture, warmup
        if self.device.type == "cuda":
            make_adam_capturable(optimizer, self.device)
        self.model_inputs: dict[str, torch.Tensor] = {}  # device tensors the step reads (CPC's t*)
        self.stream = torch.cuda.Stream(self.device) if capture else None
        self.inputs: dict[str, torch.Tensor] | None = None  # the captured step reads these
        self.outputs: StepOutputs | None = None  # and writes these, at every replay
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps_run = 0

    def __call__(self, batch: Mapping[str, torch.Tensor], cpc_generator: torch.Generator) -> StepOutputs:
        """One step on `batch`, t* drawn from `cpc_generator` as the ordinary step does (set the
        learning rate with `set_learning_rate`).

        The outputs of a replayed step are the graph's buffers: read them before the next step."""
        steps = next(iter(batch.values())).shape[1]
        self.model_inputs = self.model.prepare_step(steps, cpc_generator)
        self.steps_run += 1
        if not self.capture or self.steps_run <= self.warmup or not self._fits(batch):
            return self._eager(batch)
        if self.graph is None:
            self._capture(batch)
        for m, x in batch.items():
            self.inputs[m].copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs

    def _fits(self, batch: Mapping[str, torch.Tensor]) -> bool:
        if self.inputs is None:
            return True
        return all(batch[m].shape == x.shape and batch[m].dtype == x.dtype for m, x in self.inputs.items())

    def _eager(self, batch: Mapping[str, torch.Tensor]) -> StepOutputs:
        def step() -> StepOutputs:
            return self.optimize(batch, **self.model_inputs)

        return step() if self.stream is None else run_on_stream(self.stream, step)

    def _capture(self, batch: Mapping[str, torch.Tensor]) -> None:
        self.inputs = {m: x.detach().clone() for m, x in batch.items()}
        self.graph, self.outputs = capture_graph(lambda: self.optimize(self.inputs, **self.model_inputs),
                                                 self.stream, self.model.graph_generators())
