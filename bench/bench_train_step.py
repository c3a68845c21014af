"""One pretraining step: ours (float32, vectorised; on CUDA also captured in a CUDA graph) vs the
authors' way (float64, one-hot, loops, anomaly detection), at the default and the paper shape, on
the CPU and (when there is one) a CUDA device; see train_step_contestants.py.

    python -m pytest bench/bench_train_step.py --benchmark-columns=mean,stddev,rounds

Peak memory per contestant: profiles/cpu_train_step.py (one process per contestant).
"""

from __future__ import annotations

import pytest
import torch

from bench.train_step_contestants import SHAPES, make_step


@pytest.mark.usefixtures("flush_denormals")  # as the trainer does; denormals slow both contestants alike otherwise
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("contestant", ["codaar-graph", "codaar", "authors"])
def test_train_step(benchmark, contestant, device, shape):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if contestant == "codaar-graph" and device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    step = make_step(contestant, shape, device)
    benchmark.group = f"train step, {shape} shape (B={SHAPES[shape]['batch']}), {device}"
    benchmark.pedantic(step, rounds=3 if contestant == "authors" else 5, warmup_rounds=1)
