"""Never lose a run, never train on garbage: checkpoint integrity, the divergence guard, the
quantizer's guards on its state, one writer per run folder, leftovers of killed writes, elastic
restarts under torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import codaar_kernels as ops
from codaar.evaluate import EvaluationError
from codaar.evaluate.features import load_pretrained
from codaar.quantizer import CrossModalQuantizer
from codaar.run_folder import checkpoint as ckpt
from codaar.runtime.locks import FolderLock, is_held
from codaar.train import main
from tests.host_sync import ForbidHostSync
from tests.test_train import (
    RUN_LIMIT_S,
    TINY,
    assert_same_run,
    exits_with_usage_error,
    final_tensors,
    first_divergence,
    logged_values,
    torchrun,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def corrupt(path: Path, count: int = 1000, seed: int = 0) -> None:
    """Flip `count` bytes in the middle of a file, as a failing disk or a bad copy would."""
    data = bytearray(path.read_bytes())
    generator = torch.Generator().manual_seed(seed)
    middle = torch.randint(len(data) // 4, 3 * len(data) // 4, (count,), generator=generator)
    for i in middle.tolist():
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


# --------------------------------------------------------------------------------- integrity
def test_a_corrupt_checkpoint_is_refused_and_resume_falls_back_to_a_verified_one(tmp_path, capsys):
    args = TINY + ["--checkpoint-every", "1", "--keep-checkpoints", "2"]
    main(args + ["--max-steps", "4", "--out", str(tmp_path / "straight")])
    run = tmp_path / "run"
    main(args + ["--max-steps", "3", "--out", str(run)])
    assert checkpoint_steps(run) == [2, 3]
    corrupt(run / "checkpoints" / "step-0000003" / ckpt.TENSORS)
    with pytest.raises(ckpt.CheckpointError, match="step-0000003/tensors.safetensors: corrupt"):
        ckpt.load_checkpoint(run)
    with pytest.raises(EvaluationError, match="corrupt"):
        load_pretrained(run)
    capsys.readouterr()
    main(args + ["--max-steps", "4", "--out", str(run), "--resume"])
    printed = capsys.readouterr().out
    assert "passing over a checkpoint that does not verify" in printed and "continuing from" in printed
    assert "step-0000002" in printed
    assert_same_run(tmp_path / "straight", run)  # steps 3 and 4 ran again, exactly
    assert checkpoint_steps(run) == [3, 4] and all(ckpt.verify(p) is None for p in (run / "checkpoints").glob("step-*"))


def test_rotation_keeps_the_newest_and_loading_passes_over_corrupt_ones(tmp_path):
    """Kept checkpoints are verified when loaded, not at every save (a save re-reads nothing)."""
    tensors = {"x": torch.arange(1000.0)}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, tensors, {}, keep=5)
    corrupt(tmp_path / "checkpoints" / "step-0000003" / ckpt.TENSORS, count=10)
    corrupt(tmp_path / "checkpoints" / "step-0000002" / ckpt.TENSORS, count=10)
    folder, passed_over = ckpt.newest_verified(tmp_path)
    assert folder.name == "step-0000001" and len(passed_over) == 2 and "corrupt" in passed_over[0]
    ckpt.save_checkpoint(tmp_path, 4, tensors, {}, keep=2)  # the newest two by step, the written one always
    assert checkpoint_steps(tmp_path) == [3, 4] and ckpt.newest_verified(tmp_path)[0].name == "step-0000004"
    # a run resumed from step 1 (2 to 4 did not verify) writes 2: the later folders it left behind go
    ckpt.save_checkpoint(tmp_path, 2, tensors, {}, keep=1)
    assert checkpoint_steps(tmp_path) == [2] and ckpt.verify(tmp_path / "checkpoints" / "step-0000002") is None


def test_truncated_and_unreadable_checkpoints_name_the_file(tmp_path):
    folder = ckpt.save_checkpoint(tmp_path, 1, {"x": torch.ones(100)}, {}, keep=1)
    (folder / ckpt.TENSORS).write_bytes((folder / ckpt.TENSORS).read_bytes()[:50])
    with pytest.raises(ckpt.CheckpointError, match="tensors.safetensors: corrupt"):
        ckpt.load_checkpoint(folder)
    (folder / ckpt.META).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="meta.json: unreadable checkpoint metadata"):
        ckpt.load_checkpoint(folder)


# ------------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_exits_3(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "codaar.train", *TINY, "--lr", "1e4", "--max-steps", "30", "--checkpoint-every",
           "1", "--keep-checkpoints", "1", "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bad_step = records[-1]["step"]
    assert f"step {bad_step}: non-finite" in message and "the run stopped without saving" in message
    assert bad_step < 30 and not all(map(_finite, records[-1].values()))
    good = ckpt.resolve_checkpoint(run)
    assert checkpoint_steps(run) == [bad_step - 1] and str(good) in message
    assert all(torch.isfinite(t).all() for t in load_file(good / ckpt.TENSORS).values() if t.is_floating_point())
    load_pretrained(run)  # the kept checkpoint evaluates

    skipping = tmp_path / "skip"
    summary = main(TINY + ["--lr", "1e4", "--max-steps", "8", "--on-nonfinite", "skip", "--out", str(skipping)])
    records = [json.loads(line) for line in (skipping / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 8 and records[-1]["skipped_steps"] >= 1
    final = final_tensors(skipping)
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def test_evaluate_refuses_a_checkpoint_with_non_finite_weights(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--max-steps", "1", "--out", str(run)])
    tensors, meta = ckpt.load_checkpoint(run)
    tensors["model/quantizer.codebook"][0, 3, 1] = float("nan")
    broken = ckpt.save_checkpoint(tmp_path / "broken", 1, tensors, {k: v for k, v in meta.items()
                                                                       if k not in ("format", "version", "step",
                                                                                    "tensors_sha256")})
    with pytest.raises(EvaluationError, match="non-finite values in quantizer.codebook"):
        load_pretrained(broken)


# ----------------------------------------------------------------------- quantizer guards
@pytest.mark.parametrize("path", ["cpu-branch", "masked-eager", "masked-triton"])
def test_non_finite_latents_leave_the_quantizer_state_untouched(path):
    quantizer = CrossModalQuantizer(num_codes=13, dim=8, dead_after=1, active_window=1).to(DEVICE).train()
    good = {m: torch.randn(4, 3, 8, device=DEVICE) for m in quantizer.modalities}
    quantizer(good)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    bad = {m: z.clone() for m, z in good.items()}
    bad["text"][2, 1, 5] = float("nan")
    bad["audio"][0, 0, 0] = float("inf")
    capturable = path != "cpu-branch"
    quantizer.capturable = capturable
    with ops.use_backend("triton" if path == "masked-triton" else "eager"):
        if capturable:
            quantizer.prepare_update()
        with ForbidHostSync() if capturable else contextlib.nullcontext():
            out = quantizer(bad)
    assert float(out.metrics["update_skipped"]) == 1.0 and int(out.metrics["codes_reset"]) == 0
    for name, value in quantizer.state_dict().items():
        if name == "num_updates":
            assert int(value) == int(before[name]) + 1
        else:
            assert torch.equal(value, before[name]), name
    quantizer.capturable = False
    assert float(quantizer(good).metrics["update_skipped"]) == 0.0  # and the next good batch updates


def test_latents_that_cannot_be_quantized_are_refused():
    quantizer = CrossModalQuantizer(num_codes=13, dim=8, modalities=("video", "audio"))
    ints = {m: torch.ones(2, 3, 8, dtype=torch.long) for m in quantizer.modalities}
    with pytest.raises(TypeError, match=r"latents\['video'\] must be floating point"):
        quantizer(ints)
    with pytest.raises(TypeError, match="must be floating point"):
        quantizer.lookup("audio", torch.ones(5, 8, dtype=torch.int32))
    latents = {m: torch.randn(2, 3, 8) for m in quantizer.modalities}
    latents["audio"][1, 2, 4] = float("nan")
    quantizer.eval()
    with pytest.raises(ValueError, match=r"latents of 'audio' are not finite at frame \(1, 2\)"):
        quantizer(latents)
    with pytest.raises(ValueError, match=r"latents of 'audio' are not finite at frame \(1, 2\)"):
        quantizer.lookup("audio", latents["audio"])


# --------------------------------------------------------------------- one writer per folder
def test_one_writer_per_run_folder_and_leftovers_of_killed_writes(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "codaar.train", *TINY, "--epochs", "50", "--checkpoint-every",
                              "1", "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (run / "checkpoints" / ckpt.LATEST).is_file():
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.1)
        assert is_held(run)
        exits_with_usage_error(capsys, lambda: main(TINY + ["--out", str(run), "--resume", "auto"]),
                               "is being written by another training run (pid", str(first.pid))
    finally:
        first.kill()
        first.wait()
    assert not is_held(run)  # the lock died with its process
    # what killed writes leave behind: a staging folder and pointer, a half-written config
    (run / "checkpoints" / ".step-0000999-abcd").mkdir()
    (run / "checkpoints" / ".latest.tmp").write_text("step-0000999\n")
    (run / "config.json.tmp").write_text("{")
    done = checkpoint_steps(run)[-1]
    main(TINY + ["--out", str(run), "--resume", "--max-steps", str(done + 1)])
    printed = capsys.readouterr().out
    assert "removed what a killed run left" in printed and ".step-0000999-abcd" in printed
    assert not list((run / "checkpoints").glob(".*")) and not (run / "config.json.tmp").exists()


def test_folder_lock_in_one_process():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with FolderLock(folder, "test"):
            assert is_held(folder)
        assert not is_held(folder)


def test_a_child_of_a_killed_holder_does_not_keep_its_lock(tmp_path):
    """A process forked by the holder (a data-loader worker, say) inherits the locked descriptor; when
    the holder is killed, its lock must die with it, not live on in the child."""
    folder = tmp_path / "run"
    # The child speaks once it runs its own code (after the fork hooks), so the check below is no race.
    code = ("import os, time\nfrom codaar.runtime.locks import FolderLock\n"
            f"lock = FolderLock({str(folder)!r}, 'test').acquire()\n"
            "if os.fork() == 0:\n    print(os.getpid(), flush=True)\n    time.sleep(120)\n    os._exit(0)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        assert is_held(folder)
        holder.kill()
        holder.wait()
        assert Path(f"/proc/{child}").exists() and not is_held(folder)
        with FolderLock(folder, "test"):  # taken over while the child still runs
            assert is_held(folder)
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------- elastic restarts
def test_resume_auto_starts_fresh_then_continues(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--out", str(run), "--resume", "auto", "--max-steps", "2"])
    main(TINY + ["--out", str(run), "--resume", "auto", "--max-steps", "4"])
    main(TINY + ["--out", str(tmp_path / "straight"), "--max-steps", "4"])
    assert_same_run(tmp_path / "straight", run)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_ends_where_the_uninterrupted_run_ends(tmp_path):
    exact = TINY + ["--float64", "--dropout", "0", "--batch-size", "8", "--pretrain-clips", "48", "--max-steps",
                    "24", "--checkpoint-every", "2", "--resume", "auto",
                    "--dist-timeout", "120"]  # a wait on a peer that never comes fails instead of hanging
    torchrun(tmp_path, *exact, "--out", str(tmp_path / "straight"))
    run = tmp_path / "elastic"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "3", "-m", "codaar.train", *exact, "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "elastic.log"  # a file, not a pipe: an unread pipe would block the workers' output
    with open(log, "w") as output:
        agent = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            latest = run / "checkpoints" / ckpt.LATEST
            deadline = time.monotonic() + RUN_LIMIT_S
            while time.monotonic() < deadline and agent.poll() is None:
                if latest.is_file() and int(latest.read_text().split("-")[1]) >= 6:
                    break
                time.sleep(0.05)
            workers = _children(agent.pid)
            assert agent.poll() is None and len(workers) == 2, "the run ended before a worker could be killed"
            os.kill(workers[-1], signal.SIGKILL)
            agent.wait(timeout=RUN_LIMIT_S)
        finally:
            for pid in _children(agent.pid):
                os.kill(pid, signal.SIGKILL)
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, log.read_text()[-3000:]
    assert int(latest.read_text().split("-")[1]) == 24
    resumes = json.loads((run / "config.json").read_text())["resumes"]
    assert resumes and resumes[0]["step"] >= 6  # the restarted group resumed
    try:
        assert_same_run(tmp_path / "straight", run, tol=1e-10)
    except AssertionError as exc:  # say where the runs parted: before the resume, or after it
        parted = first_divergence(logged_values(tmp_path / "straight"), logged_values(run))
        raise AssertionError(f"{exc}\nlogged values part at {parted}; resumed at steps "
                             f"{[r['step'] for r in resumes]}") from None
    shutil.rmtree(run)


def test_a_killed_data_write_leaves_nothing_the_next_write_keeps(tmp_path):
    from codaar.data import build_synthetic, synthetic_config, write_dataset
    from codaar.runtime.publish import remove_dead_writes

    out = tmp_path / "data"
    holder = ("import sys, time\nfrom codaar.runtime.publish import atomic_output_dir\n"
              "with atomic_output_dir(sys.argv[1]) as tmp:\n    print(tmp, flush=True)\n    time.sleep(600)\n")
    killed = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    killed_partial = Path(killed.stdout.readline().strip())
    live = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    live_partial = Path(live.stdout.readline().strip())
    try:
        killed.kill()
        killed.wait()
        (tmp_path / ".data.old-1234").mkdir()  # an old copy moved aside, kept while a writer is live
        assert killed_partial.is_dir() and live_partial.is_dir()
        assert remove_dead_writes(out) == [killed_partial]
        assert live_partial.is_dir() and (tmp_path / ".data.old-1234").is_dir()
    finally:
        live.kill()
        live.wait()
    data = build_synthetic(synthetic_config("default", num_pretrain=8, num_train=4, num_val=2, num_test=2))
    write_dataset(data, out)  # the next write removes what the killed writers left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--out", str(run), "--max-steps", "2", "--checkpoint-every", "1"])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # the write a SIGKILL interrupted
    main(TINY + ["--out", str(run), "--max-steps", "3", "--resume"])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
