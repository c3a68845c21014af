"""The trainer's step, eager against `--compile` (codaar/model/compiled.py), on the CPU and (when there
is one) a CUDA device: forward, backward, per-module clipping and Adam on one batch of the built-in
data, through `Trainer.train_step` itself.

Sizes: `reduced` (the built-in data, 40 clips, a 128-wide model: the CPU target of issue #20, where
`--compile` must not be slower than eager) and `default` (the trainer's defaults: 80 clips, 256 wide).
The first call of a compiled step compiles it (minutes on a 2-core CPU): the warm-up rounds absorb it.

    python -m pytest bench/bench_compile.py --benchmark-columns=mean,stddev,rounds
    python -m pytest bench/bench_compile.py -k "reduced and cpu" --benchmark-disable   # does it run?
"""

from __future__ import annotations

import pytest
import torch

from codaar.runtime.distributed import ProcessGroup
from codaar.train.config import config_from_args
from codaar.train.loop import Trainer

SIZES = {
    "reduced": ["--batch-size", "40", "--dim", "128", "--temporal-ffn-dim", "512", "--text-lstm-dim", "64",
                "--cpc-context-dim", "128", "--projection-dim", "128"],
    "default": [],
}


def make_step(tmp_path, mode: str, size: str, device: str):
    """A trainer with `--compile` or not, and a zero-argument callable running its step on one fixed batch."""
    args = [*SIZES[size], "--out", str(tmp_path / f"{mode}-{size}-{device}"), "--device", device, "--no-progress"]
    if mode == "compile":
        args.append("--compile")
    trainer = Trainer(config_from_args(args), ProcessGroup(device=torch.device(device)))
    positions = next(iter(trainer.batches.plan(0, 1)))
    batch = trainer._batch(positions)

    def step():
        values, _ = trainer.train_step(positions, batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return values

    return trainer, step


@pytest.mark.usefixtures("flush_denormals")  # as the trainer does
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_train_step_compiled(benchmark, tmp_path, mode, device, size):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch._dynamo.reset()
    trainer, step = make_step(tmp_path, mode, size, device)
    try:
        if benchmark.disabled:  # one compiled call, checked: the compiled step computes a finite loss
            assert torch.isfinite(step()["loss"])
            return
        benchmark.group = f"train step, {size} size, {device}: eager vs --compile"
        benchmark.pedantic(step, rounds=5, warmup_rounds=2)
    finally:
        trainer.close()
