"""The data pipeline alone at the paper's shapes (video 10x7x7x512, audio 10x128, class-prompt text
10x768; batches of 80 clips from a data set folder on disk): the trainer's former path
(tests/former_batch.py: per-clip dicts, restacked, cast on the host) against `Prefetcher`
(codaar/data/batches.py: one copy into reused buffers) with 0, 1 and 2 worker threads, for float32
and float16 storage. Each round reads 12 batches (two epochs of a 480-clip folder, which the page
cache holds after writing: the steady state of a data set that fits in memory) after the ring of
buffers has been filled once; `extra_info` holds GB/s (bytes of the batches as stored) and batches/s.
The new path keeps the storage dtype (the trainer casts on the device, not timed here); the former
one cast to float32 on the host, as it did. On the CPU nothing is pinned; on a CUDA machine both pin.

    python -m pytest bench/bench_data_pipeline.py --benchmark-columns=mean,stddev,rounds \\
        --benchmark-group-by=group
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codaar.data import synthetic_config, write_synthetic
from codaar.data.batches import BatchGather, Prefetcher
from codaar.data.loader import TriModalDataset
from tests.former_batch import former_batch

CLIPS, BATCH, WARMUP, TIMED = 480, 80, 3, 12
MODALITIES = ("video", "audio", "text")
CONTESTANTS = ["former", "workers=0", "workers=1", "workers=2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    return {dtype: write_synthetic(root / dtype, synthetic_config("paper", num_pretrain=CLIPS, num_train=0, num_val=0,
                                                                  num_test=0, dtype=dtype))
            for dtype in ("float32", "float16")}


def plan(batches: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    epochs = -(-batches * BATCH // CLIPS)
    order = np.concatenate([rng.permutation(CLIPS) for _ in range(epochs)])
    return [order[i * BATCH : (i + 1) * BATCH] for i in range(batches)]


def batch_bytes(data) -> int:
    gather = BatchGather(data, "pretrain", MODALITIES)
    return sum(array[0].nbytes * BATCH for array, _ in gather.sources.values())


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("contestant", CONTESTANTS)
def test_data_pipeline(benchmark, folders, contestant, storage):
    data = folders[storage]
    steps = plan(WARMUP + TIMED)
    if contestant == "former":
        dataset = TriModalDataset(data, "pretrain", modalities=MODALITIES, dtype=torch.float32)

        def setup():
            return (), {}

        def read():
            for positions in steps[WARMUP:]:
                former_batch(dataset, positions, pin=torch.cuda.is_available())
    else:
        def setup():  # a fresh pipeline whose buffers have all been used once (their page faults not timed)
            feed = Prefetcher(BatchGather(data, "pretrain", MODALITIES), steps, BATCH, torch.device("cpu"),
                              getattr(torch, storage), workers=int(contestant.split("=")[1]))
            for positions in steps[:WARMUP]:
                feed.next(positions)
            return (feed,), {}

        def read(feed):
            with feed:
                for positions in steps[WARMUP:]:
                    feed.next(positions)

    benchmark.group = f"data pipeline, paper shape, batch {BATCH}, {storage} storage"
    benchmark.pedantic(read, setup=setup, rounds=5)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["GB/s"] = round(TIMED * batch_bytes(data) / seconds / 1e9, 3)
    benchmark.extra_info["batches/s"] = round(TIMED / seconds, 2)
