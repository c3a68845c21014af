"""The trainer's batch as it was before `codaar.data.batches`, kept as the reference the new path
must equal bit for bit (tests/test_batches.py) and as the baseline of bench/bench_data_pipeline.py:
`TriModalDataset.__getitems__` gathers the sorted clips, casts on the host and splits them into one
dict per clip in the step's order; the trainer restacked those and, on CUDA, pinned the result."""

from __future__ import annotations

import torch

from codaar.data.loader import TriModalDataset


def former_batch(dataset: TriModalDataset, positions, pin: bool = False) -> dict[str, torch.Tensor]:
    """The host side of the former `Trainer._batch` (its device copy left out)."""
    items = dataset.__getitems__(positions)
    modalities = dataset.modalities
    batch = {}
    for key in (*modalities, *(("text_mask",) if "text" in modalities else ())):
        stacked = torch.stack([item[key] for item in items])
        batch[key] = stacked.pin_memory() if pin else stacked
    return batch
