"""Checkpoints off the critical path (issue #20, part 4): one bulk host copy of the state, written,
hashed and rotated in a background thread with at most one in flight; a failed write stops the run
at its next step; the run's exit waits; kill -9 during a background write leaves `latest` complete
and the resume bit-exact."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.checkpoint_writer import CheckpointWriter
from codaar.runtime.locks import is_held
from codaar.train import main as train_main
from tests.test_train import TINY, assert_same_run


def state(device="cpu") -> dict[str, torch.Tensor]:
    """Tensors of every dtype a checkpoint holds, scalars and empty ones among them."""
    g = torch.Generator().manual_seed(0)
    tensors = {"model/w": torch.randn(7, 5, generator=g), "model/w64": torch.randn(3, generator=g).double(),
               "model/count": torch.arange(11), "model/flag": torch.tensor([True, False, True]),
               "model/half": torch.randn(4, generator=g).half(), "model/bf": torch.randn(6, generator=g).bfloat16(),
               "model/empty": torch.empty(0, 3), "optimizer/0/step": torch.tensor(5.0),
               "model/t": torch.randn(4, 6, generator=g).t()}  # not contiguous
    return {k: v.to(device) for k, v in tensors.items()}


def test_the_snapshot_is_the_state_at_the_call_bit_for_bit(tmp_path):
    tensors = state()
    before = {k: v.clone() for k, v in tensors.items()}
    writer = CheckpointWriter(tmp_path, every=1, last_step=10)
    writer.submit(1, tensors, {"note": "x"})
    for value in tensors.values():  # the next step's in-place updates, while the write runs
        value.add_(1) if value.dtype != torch.bool else value.logical_not_()
    writer.close()
    loaded, meta = ckpt.load_checkpoint(tmp_path)
    assert loaded.keys() == before.keys() and meta["note"] == "x" and meta["step"] == 1
    for key, value in before.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    # the buffers are reused for the next checkpoint of the same state
    buffers = dict(writer._buffers)
    writer.submit(2, tensors, {})
    writer.close()
    assert all(writer._buffers[d] is b for d, b in buffers.items())
    assert torch.equal(ckpt.load_checkpoint(tmp_path)[0]["model/w"], tensors["model/w"])


def test_a_failed_background_write_is_raised_at_the_next_step(tmp_path, monkeypatch):
    def full_disk(run_dir, step, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "checkpoints" / "x"))

    monkeypatch.setattr(ckpt, "write_checkpoint", full_disk)
    writer = CheckpointWriter(tmp_path, every=2, last_step=10)
    writer.after_step(2, lambda: (state(), {}))
    writer.wait()
    asked = []
    with pytest.raises(ckpt.CheckpointError, match="the checkpoint of step 2 could not be written "
                                                   r"\(.*/checkpoints/x: no space left on the device \(ENOSPC\)\)"):
        writer.after_step(3, lambda: asked.append(1) or (state(), {}))
    assert not asked  # no new snapshot once a write failed


def test_at_most_one_write_in_flight_and_the_exit_waits(tmp_path, monkeypatch):
    real, active, most = ckpt.write_checkpoint, [], []

    def slow(*args):
        active.append(1)
        most.append(len(active))
        time.sleep(0.2)
        try:
            return real(*args)
        finally:
            active.pop()

    monkeypatch.setattr(ckpt, "write_checkpoint", slow)
    writer = CheckpointWriter(tmp_path, every=1, last_step=3, keep=5)
    for step in (1, 2, 3):
        writer.after_step(step, lambda: (state(), {}))
    assert writer._thread is not None and writer._thread.is_alive()  # the last one is still being written
    writer.close()
    assert max(most) == 1 and [p.name for p in writer.written] == ["step-0000001", "step-0000002", "step-0000003"]
    assert ckpt.resolve_checkpoint(tmp_path).name == "step-0000003" and ckpt.verify(writer.written[-1]) is None


@pytest.mark.parametrize("failing_step", [2, 4])  # one the run goes on after, and the last one
def test_a_training_run_stops_at_a_failed_background_write(tmp_path, monkeypatch, capsys, failing_step):
    real = ckpt.write_checkpoint

    def fails_once(run_dir, step, *args):
        if step == failing_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(run_dir) / "checkpoints"))
        return real(run_dir, step, *args)

    monkeypatch.setattr(ckpt, "write_checkpoint", fails_once)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        train_main(TINY + ["--max-steps", "4", "--checkpoint-every", "2", "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"the checkpoint of step {failing_step} could not be written (" in err and "(ENOSPC)" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] <= 4 and not is_held(run)  # stopped by the next checkpoint at the latest; folder released
    assert not (run / "checkpoints" / f"step-{failing_step:07d}").exists()


def test_the_run_exits_after_its_last_checkpoint_is_written(tmp_path, monkeypatch, capsys):
    real = ckpt.write_checkpoint

    def slow(*args):
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(ckpt, "write_checkpoint", slow)
    run = tmp_path / "run"
    train_main(TINY + ["--max-steps", "3", "--checkpoint-every", "100", "--out", str(run)])
    assert ckpt.read_meta(ckpt.resolve_checkpoint(run))["step"] == 3
    assert f"checkpoint: {run / 'checkpoints' / 'step-0000003'}" in capsys.readouterr().out
    assert not is_held(run)


# A training run whose second checkpoint write stops half-way (as a kill -9 would find it).
STALLED_WRITE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from codaar.run_folder import checkpoint as ckpt
    from codaar.train import main
    real, calls = ckpt.write_tensor_file, []
    def stalls(path, *args):
        calls.append(1)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a tensor file")
            Path(sys.argv[1]).write_text("stalled")
            time.sleep(600)
        return real(path, *args)
    ckpt.write_tensor_file = stalls
    main(sys.argv[2:])
""")


def test_kill_9_during_a_background_write_leaves_latest_complete_and_resumes_exactly(tmp_path):
    args = TINY + ["--max-steps", "8", "--checkpoint-every", "2"]
    train_main(args + ["--out", str(tmp_path / "straight")])
    run, marker = tmp_path / "killed", tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", STALLED_WRITE, str(marker), *args, "--out", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not marker.exists():
        time.sleep(0.05)
    assert marker.exists(), process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert ckpt.resolve_checkpoint(run).name == "step-0000002" and ckpt.verify(ckpt.resolve_checkpoint(run)) is None
    assert list((run / "checkpoints").glob(".step-0000004-*"))  # the write the kill cut short, never published
    train_main(args + ["--out", str(run), "--resume"])
    assert_same_run(tmp_path / "straight", run)
    assert not list((run / "checkpoints").glob(".step-*"))


@pytest.mark.gpu
def test_a_cuda_snapshot_is_one_pinned_copy_taken_before_the_next_kernels(tmp_path):
    tensors = state("cuda")
    tensors["optimizer/0/step"] = tensors["optimizer/0/step"].cpu()  # Adam's step lives on the host
    before = {k: v.cpu().clone() for k, v in tensors.items()}
    writer = CheckpointWriter(tmp_path, every=1, last_step=1)
    writer.submit(1, tensors, {})
    for value in tensors.values():
        value.add_(1) if value.dtype != torch.bool else value.logical_not_()
    writer.close()
    assert all(b.is_pinned() for b in writer._buffers.values())
    loaded = ckpt.load_checkpoint(tmp_path)[0]
    for key, value in before.items():
        assert torch.equal(loaded[key], value), key
