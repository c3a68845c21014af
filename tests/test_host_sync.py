"""No host synchronisation inside a training step, checked on the CPU.

`ForbidHostSync` (tests/host_sync.py) raises on every ATen operation that synchronises a CUDA stream
with the host. CUDA-graph capture needs the same property. On a GPU, tests/test_gpu_sync.py checks
it again with torch's own sync-debug mode, and tests/test_gpu_graph.py captures the step.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

import codaar_kernels as ops
from codaar.quantizer import CrossModalQuantizer
from codaar.runtime.distributed import ProcessGroup
from codaar.train.config import parse_config
from codaar.train.graph_step import GraphedTrainStep
from codaar.train.loop import Trainer, TrainingError
from tests.host_sync import ForbidHostSync, HostSync
from tests.test_train import TINY

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs interpreted on the CPU


def test_the_detector_catches_what_syncs_on_cuda():
    x = torch.randn(10)
    for syncing in (lambda: x.sum().item(), lambda: bool(x.max() > 0), lambda: x[x > 0],
                    lambda: torch.bincount(x.long().abs()), lambda: x.nonzero(), lambda: x.unique(),
                    lambda: float(x[0])):
        with pytest.raises(HostSync), ForbidHostSync():
            syncing()
    with ForbidHostSync():  # fixed-size work passes
        torch.where(x > 0, x, 0).index_add_(0, torch.zeros(10, dtype=torch.long), x).cumsum(0)


def _quantizer_steps(capturable: bool, backend: str, deterministic: bool,
                     steps: int = 5) -> tuple[CrossModalQuantizer, list]:
    torch.manual_seed(0)
    quantizer = CrossModalQuantizer(num_codes=37, dim=16, dead_after=1, active_window=1,
                                    deterministic=deterministic).to(DEVICE).train()
    quantizer.capturable = capturable
    latents = [{m: torch.randn(3, 5, 16, device=DEVICE, requires_grad=True) for m in quantizer.modalities}
               for _ in range(steps)]
    resets = []
    with ops.use_backend(backend):
        for batch in latents:
            if capturable:
                quantizer.prepare_update()
            with ForbidHostSync() if capturable else contextlib.nullcontext():
                out = quantizer(batch)
                out.loss.backward()
            resets.append(int(out.metrics["codes_reset"]))
    return quantizer, resets


@pytest.mark.parametrize(("backend", "deterministic"), [("eager", False), ("triton", False), ("triton", True)])
def test_capturable_quantizer_steps_never_sync_and_equal_the_default_mode(backend, deterministic):
    """Training calls with dead-code resets (dead_after=1), through the eager references and the
    Triton kernels (interpreted on the CPU; atomic and sorted DTA accumulation): nothing syncs, and
    the state equals the default mode's."""
    capturable, resets = _quantizer_steps(True, backend, deterministic)
    default, default_resets = _quantizer_steps(False, backend, deterministic)
    assert resets == default_resets and sum(resets) > 0  # resets did happen inside the checked calls
    for name, buffer in capturable.state_dict().items():
        assert torch.equal(buffer, default.state_dict()[name]), name


def test_capturable_quantizer_asks_for_its_host_side_work():
    quantizer = CrossModalQuantizer(num_codes=5, dim=4).train()
    quantizer.capturable = True
    latents = {m: torch.randn(2, 3, 4) for m in quantizer.modalities}
    with pytest.raises(RuntimeError, match="call prepare_update"):
        quantizer(latents)
    quantizer.prepare_update()
    quantizer(latents)
    with pytest.raises(RuntimeError, match="call prepare_update"):  # once per update
        quantizer(latents)


def _trainer(tmp_path, name: str, *extra: str) -> Trainer:
    cfg = parse_config([*TINY, "--out", str(tmp_path / name), "--max-steps", "8", "--checkpoint-every", "8",
                        "--device", "cpu", *extra])
    return Trainer(cfg, ProcessGroup())


def test_fixed_shape_step_equals_the_ordinary_step(tmp_path):
    """The step --cuda-graph captures (fixed shapes, t* on the device, the trainer doing the
    quantizer's host bookkeeping), run eagerly on the CPU, trains to what the ordinary step does."""
    ordinary = _trainer(tmp_path, "ordinary")
    ordinary.run()
    fixed = _trainer(tmp_path, "fixed")
    fixed.graph_step = GraphedTrainStep(fixed.model, fixed.optimizer, fixed.optimize, capture=False)
    fixed.run()
    a, b = ordinary.model.state_dict(), fixed.model.state_dict()
    for key in a:  # measured bit-identical on the CPU; the tolerance leaves room for other BLAS builds
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    assert fixed.model.quantizer.num_updates.item() == 8


def test_fixed_shape_model_step_never_syncs(tmp_path):
    """What --cuda-graph captures (forward, backward, clipping; the trainer's host side is outside)."""
    trainer = _trainer(tmp_path, "run")
    step = GraphedTrainStep(trainer.model, trainer.optimizer, trainer.optimize, capture=False)
    batch = trainer._batch(trainer.batches(0)[0])
    step(batch, torch.Generator().manual_seed(0))  # the first call initialises Adam's state
    adam_step, optimize = trainer.optimizer.step, step.optimize

    def adam_outside_the_check():  # CPU Adam reads its step count back (.item()); on CUDA the
        with _disable_current_modes():  # graph step uses capturable Adam (test_gpu_graph.py)
            adam_step()

    def checked_optimize(*args, **kwargs):
        with ForbidHostSync():
            return optimize(*args, **kwargs)

    trainer.optimizer.step, step.optimize = adam_outside_the_check, checked_optimize
    values, indices = step(batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(values["loss"]) and set(indices) == set(trainer.model_config.modalities)


def test_cuda_graph_option_needs_cuda(tmp_path):
    with pytest.raises(TrainingError, match="--cuda-graph needs one process on a CUDA device"):
        _trainer(tmp_path, "run", "--cuda-graph")
