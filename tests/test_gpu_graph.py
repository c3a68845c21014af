"""On a CUDA device: `--cuda-graph` trains to what the same step computes without the graph, never
synchronises with the host once captured, and resumes. Skipped on CPU-only machines (CI);
profiles/gpu_run.sh runs it. The CPU tests (test_host_sync.py) check the captured function itself.

The tolerance: the graph replays the same kernels as the eager step, but a GPU step is not bit
reproducible (atomic adds in index backward passes), so runs are compared within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codaar.runtime.distributed import ProcessGroup
from codaar.train.config import parse_config
from codaar.train.graph_step import GraphedTrainStep
from codaar.train.loop import Trainer
from tests.test_train import TINY

pytestmark = pytest.mark.gpu  # skipped without a CUDA device (conftest.py)
CUDA = ProcessGroup(device=torch.device("cuda"))


def _trainer(out: Path, *extra: str) -> Trainer:
    # 60 clips, batch 20: 3 steps an epoch, so the graph also meets epoch boundaries and lr changes
    cfg = parse_config([*TINY, "--pretrain-clips", "60", "--out", str(out), "--device", "cuda",
                        "--deterministic", "--lr-milestones", "2,3", *extra])
    return Trainer(cfg, CUDA)


def _assert_close_states(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        if sa[key].is_floating_point():
            torch.testing.assert_close(sb[key], sa[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(sb[key], sa[key]), key


def test_graph_run_equals_the_same_step_run_eagerly(tmp_path):
    graphed = _trainer(tmp_path / "graph", "--cuda-graph", "--max-steps", "12")
    graphed.run()
    assert graphed.graph_step.graph is not None and graphed.graph_step.steps_run == 12
    eager = _trainer(tmp_path / "eager", "--max-steps", "12")
    eager.graph_step = GraphedTrainStep(eager.model, eager.optimizer, eager.optimize, capture=False)
    eager.run()
    _assert_close_states(graphed, eager)


def test_replayed_steps_never_sync(tmp_path):
    trainer = _trainer(tmp_path / "run", "--cuda-graph", "--max-steps", "12")
    positions = trainer.batches(0)[0]
    for _ in range(trainer.graph_step.warmup + 1):  # warm-up steps and the capture may synchronise
        trainer.train_step(positions)
        trainer.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step(positions)
            trainer.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_graph_run_resumes(tmp_path):
    whole = _trainer(tmp_path / "whole", "--cuda-graph", "--max-steps", "12")
    whole.run()
    _trainer(tmp_path / "split", "--cuda-graph", "--max-steps", "7", "--checkpoint-every", "7").run()
    resumed = _trainer(tmp_path / "split", "--cuda-graph", "--max-steps", "12", "--resume")
    resumed.run()
    _assert_close_states(whole, resumed)
