"""Batches gathered with one copy, ahead of the step (codaar/data/batches.py): the very rows, in the very
order and dtype, that the trainer's former path gave (tests/former_batch.py), folder-backed and in
memory, with class prompts, padded per-clip text or no text, float16 storage cast to float32 and
float64; the same batches with 0, 1 or 2 workers; `depth` batches gathered ahead and no more; a read
that fails names the thread and the step and never hangs; a file cut short is refused before it is
read. (CUDA's side-stream copy: tests/test_gpu_batches.py.)"""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from codaar.data import DataFormatError, build_synthetic, synthetic_config, write_synthetic
from codaar.data.batches import BatchError, BatchGather, Prefetcher, to_device
from codaar.data.loader import TriModalDataset
from codaar.train import loop, main
from tests.former_batch import former_batch
from tests.test_train import TINY, assert_same_run, exits_with_usage_error, logged_values

CPU = torch.device("cpu")


def tiny_config(preset: str = "default", dtype: str = "float32"):
    # video as 2x2x3 maps (the paper's spatial layout), 23 pretraining clips: batches of 5 leave a rest of 3
    return synthetic_config(preset, num_pretrain=23, num_train=9, num_val=2, num_test=2, audio_dim=6,
                            video_shape=(2, 2, 3), text_dim=5, dtype=dtype, seed=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Data set folders (memory-mapped when loaded), by (preset, storage dtype)."""
    root = tmp_path_factory.mktemp("batches")
    return {(preset, dtype): write_synthetic(root / f"{preset}-{dtype}", tiny_config(preset, dtype))
            for preset, dtype in [("default", "float32"), ("default", "float16"), ("hard", "float32")]}


CASES = {  # name: (preset, storage dtype, in a folder, split, modalities, model dtype)
    "memory": ("default", "float32", False, "pretrain", ("video", "audio", "text"), torch.float32),
    "folder": ("default", "float32", True, "pretrain", ("video", "audio", "text"), torch.float32),
    "folder-train-split": ("default", "float32", True, "train", ("video", "audio", "text"), torch.float32),
    "per-clip-text-float64": ("hard", "float32", True, "pretrain", ("video", "audio", "text"), torch.float64),
    "float16-to-float32": ("default", "float16", True, "pretrain", ("video", "audio", "text"), torch.float32),
    "float16-to-float64": ("default", "float16", False, "pretrain", ("audio", "video", "text"), torch.float64),
    "no-text": ("default", "float32", False, "pretrain", ("video", "audio"), torch.float32),
}


def case_data(folders, name):
    preset, storage, in_folder, split, modalities, dtype = CASES[name]
    data = folders[(preset, storage)] if in_folder else build_synthetic(tiny_config(preset, storage))
    return data, split, modalities, dtype


def plan_of(data, split: str, batch: int = 5, epochs: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Batches of shuffled positions as the trainer cuts them: the last of an epoch shorter."""
    rng = np.random.default_rng(seed)
    clips = len(data.split(split))
    return [order[i : i + batch] for order in (rng.permutation(clips) for _ in range(epochs))
            for i in range(0, clips, batch)]


def assert_same_batch(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name", list(CASES))
def test_one_copy_gather_equals_the_former_batch(folders, name):
    data, split, modalities, dtype = case_data(folders, name)
    former = TriModalDataset(data, split, modalities=modalities, dtype=dtype)
    gather = BatchGather(data, split, modalities)
    for positions in plan_of(data, split)[:4]:  # unsorted positions, and the short last batch
        host = gather.gather_into(positions, gather.buffers(5))
        assert all(t.dtype == torch.bool or t.dtype == getattr(torch, CASES[name][1]) for t in host.values())
        assert_same_batch(to_device(host, CPU, dtype), former_batch(former, positions))
    if CASES[name][0] == "hard":  # per-clip captions are padded: the mask is not all True
        assert not former_batch(former, plan_of(data, split)[0])["text_mask"].all()


@pytest.mark.parametrize("name", ["folder", "per-clip-text-float64", "float16-to-float32", "no-text"])
@pytest.mark.parametrize("workers, depth", [(0, None), (1, None), (1, 3), (2, None)])
def test_prefetched_batches_equal_the_former_ones_in_order(folders, name, workers, depth):
    data, split, modalities, dtype = case_data(folders, name)
    former = TriModalDataset(data, split, modalities=modalities, dtype=dtype)
    plan = plan_of(data, split)  # 10 batches: more than the ring of buffers holds
    with Prefetcher(BatchGather(data, split, modalities), iter(plan), 5, CPU, dtype, workers, depth) as batches:
        for positions in plan:
            batch = {key: value.clone() for key, value in batches.next(positions).items()}  # valid until next()
            assert_same_batch(batch, former_batch(former, positions))
        with pytest.raises(BatchError, match="step 11: the plan of batches has ended"):
            batches.next(plan[0])


def test_the_positions_asked_for_must_be_the_planned_ones(folders):
    data = case_data(folders, "memory")[0]
    plan = plan_of(data, "pretrain")
    batches = Prefetcher(BatchGather(data, "pretrain", ("audio",)), plan, 5, CPU, torch.float32, workers=1)
    with batches, pytest.raises(BatchError, match="step 1: asked for other clips than the planned ones"):
        batches.next(plan[1])


class RecordingArray(np.ndarray):
    """A feature array that notes the rows of every batch gathered from it and raises an OSError when
    asked for the rows `fail_rows`: the seam for a read that fails midway."""

    def take(self, indices, axis=None, out=None, mode="raise"):
        with self.lock:
            self.gathered.append(np.array(indices))
        if self.fail_rows is not None and np.array_equal(indices, self.fail_rows):
            raise OSError(5, "Input/output error")
        return super().take(indices, axis=axis, out=out, mode=mode)


def recording(data, fail_rows: np.ndarray | None = None) -> RecordingArray:
    video = data.video.view(RecordingArray)
    video.gathered, video.lock, video.fail_rows = [], threading.Lock(), fail_rows
    data.video = video
    return video


def wait_until_gathered(video: RecordingArray, count: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while len(video.gathered) < count:
        assert time.monotonic() < deadline, f"timed out waiting for {count} gathers"
        time.sleep(0.01)


def test_workers_gather_depth_batches_ahead_and_no_more():
    data = build_synthetic(tiny_config())
    video = recording(data)
    plan = plan_of(data, "pretrain")
    clips = data.split("pretrain")
    with Prefetcher(BatchGather(data, "pretrain", ("video",)), plan, 5, CPU, torch.float32, workers=1,
                    depth=2) as batches:
        wait_until_gathered(video, 2)  # before the first step asks: its batch and the next
        for step, positions in enumerate(plan[:4]):
            batches.next(positions)
            # while step `step` runs, the batches of the next two steps are gathered, not a third
            wait_until_gathered(video, step + 3)
            time.sleep(0.1)
            assert len(video.gathered) == step + 3
            assert all(np.array_equal(rows, clips[p]) for rows, p in zip(video.gathered, plan))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_failed_read_names_the_thread_and_the_step_and_never_hangs(workers):
    data = build_synthetic(tiny_config())
    plan = plan_of(data, "pretrain")
    recording(data, fail_rows=data.split("pretrain")[plan[3]])
    batches = Prefetcher(BatchGather(data, "pretrain", ("video", "audio")), plan, 5, CPU, torch.float32,
                         workers, first_step=40)
    for positions in plan[:3]:
        batches.next(positions)
    who = "the main thread" if workers == 0 else "data worker codaar-batches_"
    with pytest.raises(BatchError, match=f"{who}.* failed to read the batch of step 44 .5 clips.: "
                                         f"OSError: .Errno 5. Input/output error"):
        batches.next(plan[3])
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 10


def test_a_file_cut_short_while_mapped_is_refused_before_it_is_read(tmp_path):
    data = write_synthetic(tmp_path / "data", tiny_config())
    plan = plan_of(data, "pretrain")
    batches = Prefetcher(BatchGather(data, "pretrain", ("video", "audio")), plan, 5, CPU, torch.float32, workers=0)
    batches.next(plan[0])
    os.truncate(tmp_path / "data" / "video.npy", 1000)  # reading a lost page would kill the process (SIGBUS)
    with pytest.raises(BatchError, match="the main thread failed to read the batch of step 2") as raised:
        batches.next(plan[1])
    cause = raised.value.__cause__
    assert isinstance(cause, DataFormatError) and cause.field == "video"
    assert str(tmp_path / "data" / "video.npy") in str(cause) and "found 1000: the file was cut short" in str(cause)


def test_positions_outside_the_split_are_refused():
    data = build_synthetic(tiny_config())
    gather = BatchGather(data, "pretrain", ("audio",))
    with pytest.raises(IndexError, match=r"in \[0, 23\) .* range \[0, 23\]"):
        gather.gather_into(np.array([0, 23]), gather.buffers(2))


def test_a_waited_time_is_reported_once():
    data = build_synthetic(tiny_config())
    plan = plan_of(data, "pretrain")
    with Prefetcher(BatchGather(data, "pretrain", ("audio",)), plan, 5, CPU, torch.float32, workers=0) as batches:
        batches.next(plan[0])
        batches.next(plan[1])
        assert batches.take_wait_seconds() > 0 and batches.take_wait_seconds() == 0.0


# ------------------------------------------------------------------------------------ the trainer
def test_the_trainer_trains_the_same_with_any_number_of_workers(tmp_path):
    # 50 clips in batches of 20: 3 steps an epoch, the last of 10; 5 steps cross into the second epoch
    args = TINY + ["--pretrain-clips", "50", "--max-steps", "5", "--modalities", "video,audio,text", "--log-every", "1"]
    for workers in ("0", "2"):
        main(args + ["--out", str(tmp_path / workers), "--data-workers", workers])
    assert_same_run(tmp_path / "0", tmp_path / "2")
    assert logged_values(tmp_path / "0") == logged_values(tmp_path / "2")
    waits = [json.loads(line)["data_wait_ms"] for line in (tmp_path / "2" / "metrics.jsonl").read_text().splitlines()]
    assert len(waits) == 5 and all(w >= 0 for w in waits)


def test_a_batch_that_cannot_be_read_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    original = loop.load_data

    def data_failing_at_step_2(cfg):
        data = original(cfg)
        single = SimpleNamespace(rank=0, world_size=1)
        positions = loop.EpochBatches(len(data.split(cfg.split)), cfg, single)(0)[1]
        recording(data, fail_rows=data.split(cfg.split)[positions])
        return data

    monkeypatch.setattr(loop, "load_data", data_failing_at_step_2)
    run = tmp_path / "run"
    exits_with_usage_error(capsys, lambda: main(TINY + ["--out", str(run), "--max-steps", "4", "--checkpoint-every",
                                                        "1", "--data-workers", "1"]),
                           "error: data worker codaar-batches_0 failed to read the batch of step 2 (20 clips): "
                           "OSError: [Errno 5] Input/output error")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000001"
