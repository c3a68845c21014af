"""On a CUDA device: batches gathered into pinned buffers and copied on a side stream (codaar/data/
batches.py) are, on the training stream, exactly the former path's batches moved to the device, with
any number of workers and float16 storage cast on the device; asking for one never synchronises the
host (torch raises in sync-debug mode "error"). Needs a GPU: skipped on CPU-only machines (CI);
profiles/gpu_run.sh runs it."""

from __future__ import annotations

import pytest
import torch

from codaar.data import build_synthetic
from codaar.data.batches import BatchGather, Prefetcher
from codaar.data.loader import TriModalDataset
from tests.former_batch import former_batch
from tests.test_batches import plan_of, tiny_config

pytestmark = pytest.mark.gpu  # skipped without a CUDA device (conftest.py)
MODALITIES = ("video", "audio", "text")


@pytest.mark.parametrize("storage, dtype", [("float32", torch.float32), ("float16", torch.float32),
                                            ("float32", torch.float64)])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_side_stream_batches_equal_the_former_ones_without_a_host_sync(storage, dtype, workers):
    data = build_synthetic(tiny_config("hard", storage))
    former = TriModalDataset(data, "pretrain", modalities=MODALITIES, dtype=dtype)
    plan = plan_of(data, "pretrain", epochs=3)  # 15 batches through a ring of 2 or 3 buffer sets
    device = torch.device("cuda")
    kept = []
    with Prefetcher(BatchGather(data, "pretrain", MODALITIES), plan, 5, device, dtype, workers) as batches:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for positions in plan:  # no host sync in between: a buffer reused too early would show
                batch = batches.next(positions)
                kept.append({key: value.clone() for key, value in batch.items()})  # work on the training stream
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for positions, batch in zip(plan, kept):
        reference = former_batch(former, positions)
        assert list(batch) == list(reference)
        for key, value in reference.items():
            assert batch[key].device.type == "cuda" and batch[key].dtype == value.dtype, key
            assert torch.equal(batch[key].cpu(), value), key
