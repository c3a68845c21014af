"""torch Dataset / DataLoader over a `TriModalData` or a data set folder.

Reads lazily: when built from a folder, each worker process opens the ``.npy`` files itself
(``np.load(mmap_mode='r')``) on first use, so nothing large is pickled to workers and data
larger than RAM works; the OS page cache does the rest. A batch is read with one sorted
fancy-index per array (``__getitems__``), which keeps memory-mapped reads sequential-ish.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .container import TriModalData
from .format import load_dataset


class TriModalDataset(Dataset):
    """Clips of one split. Each item is a dict of tensors:

    ``index`` (int64 clip index), ``audio`` [T, Da], ``video`` [T, *Sv], ``text`` [L, Dt] with
    ``text_mask`` [L] bool (True = real token; all True for class prompts), ``category`` (int64),
    and, with ``with_labels``, ``labels`` [T, K+1] (the shared set) plus ``labels_audio`` /
    ``labels_video`` when the data set has per-modality labels.
    Features come as float32 (the trainer casts if it wants float64).
    """

    def __init__(self, data: TriModalData | str | Path, split: str | None = None,
                 modalities: tuple[str, ...] = ("audio", "video", "text"), with_labels: bool = False,
                 dtype: torch.dtype = torch.float32):
        if isinstance(data, (str, Path)):
            data = load_dataset(data)
        unknown = set(modalities) - set(data.modalities)
        if unknown:
            raise KeyError(f"modalities {sorted(unknown)} not in the data set (has {list(data.modalities)})")
        self.indices = np.arange(data.num_clips) if split is None else np.asarray(data.split(split))
        self.modalities, self.with_labels, self.dtype = tuple(modalities), with_labels, dtype
        # A folder-backed set is reopened per process; an in-memory one is kept as is.
        self._root = data.root
        self._data = None if data.root is not None else data

    @property
    def data(self) -> TriModalData:
        if self._data is None:
            self._data = load_dataset(self._root, check_finite=False)
        return self._data

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._root is not None:
            state["_data"] = None  # never pickle memory maps into workers: they would be copied
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def _features(self, array: np.ndarray, clips: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array[clips])).to(self.dtype)

    def __getitems__(self, positions) -> list[dict]:
        clips = self.indices[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(clips, kind="stable")
        sorted_clips = clips[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        data = self.data
        batch = {"index": torch.from_numpy(sorted_clips.astype(np.int64)),
                 "category": torch.from_numpy(np.asarray(data.category[sorted_clips], dtype=np.int64))}
        for modality in self.modalities:
            source = data.text(sorted_clips) if modality == "text" else data.modality(modality)[sorted_clips]
            batch[modality] = torch.from_numpy(np.ascontiguousarray(source)).to(self.dtype)
        if "text" in self.modalities:
            batch["text_mask"] = torch.from_numpy(np.ascontiguousarray(data.text_mask(sorted_clips)))
        if self.with_labels:
            for name, labels in data.labels.items():
                key = "labels" if name == "segment" else f"labels_{name}"
                batch[key] = torch.from_numpy(np.ascontiguousarray(labels[sorted_clips])).float()
        # Back to the sampler's order, one dict per clip (so torch's default_collate applies).
        return [{key: value[int(i)] for key, value in batch.items()} for i in inverse]

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])[0]


def make_dataloader(data: TriModalData | str | Path, split: str | None = None, batch_size: int = 80,
                    shuffle: bool = True, seed: int = 0, drop_last: bool = False, num_workers: int = 0,
                    modalities: tuple[str, ...] = ("audio", "video", "text"), with_labels: bool = False,
                    sampler=None, pin_memory: bool | None = None, dtype: torch.dtype = torch.float32) -> DataLoader:
    """A DataLoader over one split. ``pin_memory`` defaults to True exactly when CUDA is
    available; ``seed`` fixes the shuffle order; pass a ``DistributedSampler`` as ``sampler``
    for DDP (then ``shuffle`` is ignored)."""
    dataset = TriModalDataset(data, split, modalities=modalities, with_labels=with_labels, dtype=dtype)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator, persistent_workers=num_workers > 0)
