"""Host time per training step at the paper's data shapes (`--data-preset paper`: video 10x7x7x512,
audio 10x128, class-prompt text 10x768; batches of 80, from a 160-clip data folder on disk, as
`python -m codaar.data synth --preset paper` writes it) with a tiny model (`--dim 32`, 16 codes, 32 video channels),
so that the model's arithmetic is small and what the host does around it shows:

- `step`: one whole `Trainer.advance` (the prefetched batch, the step, folding its logged values and
  codes into the device-side log), as `Trainer.run` does between log points;
- `bookkeeping`: only what the loop adds around the model per step: taking the next batch from the
  prefetcher (`feed.next`), `StepLog.add` and `CodesSeen.add` on the values and indices of a step.
  On a GPU this is the host's share that must stay below the device's step time.
- `log point`: the read at a log point (`StepLog.read`, one device-to-host copy) after a step.

    python -m pytest bench/bench_host_time.py --benchmark-columns=mean,stddev,rounds
"""

from __future__ import annotations

import pytest
import torch

from codaar.data import synthetic_config, write_synthetic
from codaar.runtime.distributed import ProcessGroup
from codaar.train.config import parse_config
from codaar.train.loop import Trainer
from codaar.train.step_log import CodesSeen, StepLog

TINY_MODEL = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
              "--projection-dim", "32", "--video-gate-dim", "8", "--video-hidden-channels", "32",
              "--video-projection-channels", "32"]
CLIPS, BATCH, STEPS = 160, 80, 2  # two steps an epoch; each round runs STEPS steps


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = tmp_path_factory.mktemp("host")
    # a data folder of the paper preset's shapes with only the pretraining clips (the preset has 2.9 GB)
    write_synthetic(root / "data", synthetic_config("paper", num_pretrain=CLIPS, num_train=0, num_val=0, num_test=0))
    cfg = parse_config([*TINY_MODEL, "--data", str(root / "data"), "--batch-size", str(BATCH), "--epochs", "1000",
                        "--no-progress", "--device", device, "--out", str(root / "run")])
    trainer = Trainer(cfg, ProcessGroup(device=torch.device(device)))
    trainer.step_log = StepLog(trainer.device, trainer._guarded)
    trainer.codes_seen = CodesSeen(trainer.model_config.modalities, trainer.model_config.num_codes,
                                   trainer.batches.steps_per_epoch, trainer.device)
    yield trainer
    trainer.close()


def _feed(trainer: Trainer):
    """A prefetcher from the trainer's step on, and the positions of its steps."""
    return trainer._prefetcher(), trainer.batches.plan(trainer.step, trainer.total_steps)


def _synchronize(trainer: Trainer) -> None:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


@pytest.mark.usefixtures("flush_denormals")
@pytest.mark.parametrize("part", ["step", "bookkeeping", "log point"])
def test_host_time_per_step(benchmark, trainer, part):
    positions = next(trainer.batches.plan(trainer.step, trainer.total_steps))
    values, indices = trainer.train_step(positions)  # a step's outputs, for the bookkeeping alone
    trainer.step_log.read()

    def setup():
        _synchronize(trainer)
        return _feed(trainer), {}  # (feed, plan)

    def whole_steps(feed, plan):
        with feed:
            for _ in range(STEPS):
                positions = next(plan)
                trainer.advance(positions, feed.next(positions))

    def bookkeeping(feed, plan):
        with feed:
            for _ in range(STEPS):
                feed.next(next(plan))
                trainer.step_log.add(trainer.step + 1, values)
                trainer.codes_seen.add(trainer.step, indices)
                trainer.step += 1  # the prefetcher's plan moves on with it

    def log_point(feed, plan):
        with feed:
            positions = next(plan)
            trainer.advance(positions, feed.next(positions))
            trainer.step_log.read()

    run = {"step": whole_steps, "bookkeeping": bookkeeping, "log point": log_point}[part]
    benchmark.group = f"host time per step, paper data shape (B={BATCH}), tiny model, {trainer.device.type}"
    benchmark.pedantic(run, setup=setup, rounds=5)
    if benchmark.stats is not None:  # (none under --benchmark-disable)
        per = 1 if part == "log point" else STEPS
        benchmark.extra_info["ms per step"] = round(1000 * benchmark.stats.stats.mean / per, 3)
