"""The training loop around the step: no host sync between log points (the logged values, the codes
used and the divergence guard stay on the device), records per log point, what a step costs (FLOPs,
step time, data wait, clips/s, MFU), and SIGTERM / SIGINT stopping a run at a step's end with a
checkpoint of that step (tested in real subprocesses, `tests/fault_runner.py`)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.metrics_log import WALL_CLOCK_FIELDS, read_metrics
from codaar.runtime.distributed import ProcessGroup
from codaar.runtime.flops import peak_flops, run_precision
from codaar.train import main
from codaar.train.config import parse_config
from codaar.train.graph_step import GraphedTrainStep
from codaar.train.loop import Trainer
from codaar.train.step_log import CodesSeen, StepLog
from tests.host_sync import ForbidHostSync
from tests.test_train import TINY, assert_same_run, exits_with_usage_error

_local_scalar_dense = torch.ops.aten._local_scalar_dense.default
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ no host sync
class ForbidHostSyncButAdamCounters(ForbidHostSync):
    """ForbidHostSync, except one thing: Adam reading its own step counters (`state["step"]`, CPU
    tensors that torch's non-capturable Adam keeps on the host on every device, so reading them never
    waits for a GPU). Counts the operations it checked."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.optimizer, self.checked = optimizer, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _local_scalar_dense and any(args[0] is s.get("step") for s in self.optimizer.state.values()):
            return func(*args, **(kwargs or {}))
        self.checked += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def _unchecked(fn):
    def call(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return call


def test_no_host_sync_at_steps_that_are_not_log_points(tmp_path):
    """Real `Trainer.run` steps under the host-sync detector, which is switched off only at the log
    points (their one read, the record, the checkpoint) and for the end-of-run summary.

    The step is the fixed-shape one that --cuda-graph runs (here eagerly): on the CPU the ordinary
    step takes branches that cost nothing there and that a GPU never takes (the quantizer skips a
    non-finite update or a reset with nothing dead by a host branch, codaar/quantizer.py). Its
    host-side preparation (`prepare_step`: CPC's t* drawn from a CPU generator) runs before each
    step by design, on the host, also on a GPU; it is outside the check too. The codebooks start
    from the authors' init: a k-means init (the trainer's default) reads its picks back once, in the
    first step of a run, which is no cost per step."""
    cfg = parse_config([*TINY, "--out", str(tmp_path / "run"), "--max-steps", "8", "--log-every", "4",
                        "--checkpoint-every", "8", "--device", "cpu", "--data-workers", "0",
                        "--codebook-init", "official"])
    trainer = Trainer(cfg, ProcessGroup())
    trainer.graph_step = GraphedTrainStep(trainer.model, trainer.optimizer, trainer.optimize, capture=False)
    trainer.model.prepare_step = _unchecked(trainer.model.prepare_step)
    log_points = []
    log_point = trainer._log_point

    def checked_log_point(*args):
        log_points.append(trainer.step)
        return log_point(*args)

    trainer._log_point = _unchecked(checked_log_point)
    trainer._summary = _unchecked(trainer._summary)
    detector = ForbidHostSyncButAdamCounters(trainer.optimizer)
    with detector:
        summary = trainer.run()
    assert log_points == [4, 8] and summary["steps"] == 8 and detector.checked > 1000
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r["steps"]) for r in records] == [(4, 4), (8, 4)]


def test_step_log_combines_steps_and_finds_the_first_non_finite_one():
    log = StepLog(torch.device("cpu"), guarded=lambda key: key == "loss")
    steps = [{"loss": 1.0, "codes_reset": 2, "codes_recent/audio": 5.0, "other": float("nan")},
             {"loss": 3.0, "codes_reset": 1, "codes_recent/audio": 7.0, "other": 1.0},
             {"loss": float("inf"), "codes_reset": 0, "codes_recent/audio": 6.0, "other": 1.0},
             {"loss": float("nan"), "codes_reset": 0, "codes_recent/audio": 6.0, "other": 1.0}]
    for step, values in enumerate(steps[:2], start=1):
        log.add(step, {k: torch.tensor(v) for k, v in values.items()})
    point = log.read()
    assert point.values["loss"] == 2.0 and point.values["codes_reset"] == 3 and point.steps == 2
    assert point.values["codes_recent/audio"] == 7.0  # a state: its value at the log point
    assert point.first_nonfinite_step is None and point.nonfinite == []  # "other" is not guarded
    for step, values in enumerate(steps[2:], start=3):
        log.add(step, {k: torch.tensor(v) for k, v in values.items()})
    point = log.read()
    assert point.first_nonfinite_step == 3 and point.nonfinite == ["loss"] and point.steps == 2
    assert log.read() is None


def test_codes_seen_counts_distinct_codes_over_the_last_steps():
    seen = CodesSeen(("audio",), num_codes=10, window=2, device=torch.device("cpu"))
    for step, codes in enumerate(([1, 1, 2], [3], [3, 4, 4])):
        seen.add(step, {"audio": torch.tensor(codes)})
    assert seen.full and seen.counts() == {"audio": 2}  # {3} and {3, 4}: the first step has left the window


def test_a_divergence_between_log_points_names_its_first_step_and_is_never_saved(tmp_path, capsys, monkeypatch):
    """Step 7 gets a batch of NaN features: its loss and gradients, then the weights, go non-finite.
    Logging every 4 steps, that is found at the log point of step 8, before its checkpoint: the run
    stops with status 3, the message names step 7 (recorded on the device), as logging every step
    does, and only the finite checkpoint of step 4 exists."""
    train_step = Trainer.train_step

    def poisoned(self, positions, batch=None):
        if self.step + 1 == 7:
            batch = {m: x.clone().fill_(math.nan) if x.is_floating_point() else x for m, x in batch.items()}
        return train_step(self, positions, batch)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    args = TINY + ["--max-steps", "12", "--modalities", "video,audio", "--checkpoint-every", "4"]
    for name, log_every in (("every", "1"), ("window", "4")):
        with pytest.raises(SystemExit) as exited:
            main(args + ["--out", str(tmp_path / name), "--log-every", log_every])
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert exited.value.code == 3 and "step 7: non-finite loss" in message, message
        assert "without saving this state" in message and "step-0000004" in message, message
        assert ckpt.resolve_checkpoint(tmp_path / name).name == "step-0000004"
        tensors, _ = ckpt.load_checkpoint(tmp_path / name)
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    window = read_metrics(tmp_path / "window" / "metrics.jsonl")
    assert [(r["step"], r["steps"]) for r in window] == [(4, 4), (8, 4)] and not math.isfinite(window[-1]["loss"])
    every = read_metrics(tmp_path / "every" / "metrics.jsonl")
    assert [r["step"] for r in every] == list(range(1, 8)) and math.isfinite(every[5]["loss"])


def test_log_every_and_data_workers_refuse_bad_values(capsys):
    exits_with_usage_error(capsys, lambda: main(TINY + ["--log-every", "0"]), "setting 'log_every'", ">= 1")
    exits_with_usage_error(capsys, lambda: main(TINY + ["--log-every", "-3"]), "setting 'log_every'")
    exits_with_usage_error(capsys, lambda: main(TINY + ["--data-workers", "-1"]), "setting 'data_workers'")


# -------------------------------------------------------------------------- what a step costs
def test_peaks_by_card_and_precision():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "tf32") == 378e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp64") == 19.5e12
    assert peak_flops("Some Future Card", "bf16") is None
    assert run_precision(torch.float32, bf16_autocast=True) == "bf16"
    assert run_precision(torch.float64, bf16_autocast=False) == "fp64"


def test_flops_are_counted_once_and_mfu_uses_the_peak(tmp_path, capsys):
    cfg = parse_config([*TINY, "--out", str(tmp_path / "run"), "--max-steps", "2", "--device", "cpu"])
    trainer = Trainer(cfg, ProcessGroup())
    small = Trainer(parse_config([*TINY, "--out", str(tmp_path / "small"), "--max-steps", "2", "--device", "cpu",
                                  "--dim", "16"]), ProcessGroup())
    assert trainer.step_flops > small.step_flops > 0  # counted at the run's sizes
    small.close()
    trainer.peak_flops = trainer.step_flops * 10.0  # a card 10 steps/s fast at its peak
    summary = trainer.run()
    assert 0 < summary["mfu"] == pytest.approx(summary["steps_per_second"] / 10, rel=0.05)
    assert "MFU" in capsys.readouterr().out
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert record["mfu"] == pytest.approx(1000 / record["step_ms"] / 10)
    assert {"mfu", "step_ms", "clips_per_second", "data_wait_ms"} <= set(WALL_CLOCK_FIELDS)


# ------------------------------------------------------------------------------ signals
def run_children(cases: list[dict], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict] | None]:
    """`tests.fault_runner` on `cases` in a fresh process: (the process, its results if it wrote them)."""
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"cases": cases}))
    done = subprocess.run([sys.executable, "-m", "tests.fault_runner", str(spec), str(result)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    return done, json.loads(result.read_text()) if result.exists() else None


def latest_step(run: Path) -> int:
    return int(ckpt.resolve_checkpoint(run).name.split("-")[1])


STOPPABLE = TINY + ["--max-steps", "12", "--checkpoint-every", "4", "--log-every", "3", "--modalities", "video,audio"]
AT_STEP = "codaar.train.loop:Trainer.train_step"


def test_sigterm_and_sigint_checkpoint_the_step_reached_and_resume_to_the_same_run(tmp_path, capsys):
    term, interrupt = tmp_path / "term", tmp_path / "int"
    done, results = run_children([
        {"program": "train", "argv": STOPPABLE + ["--out", str(term)], "signal": [AT_STEP, 5, signal.SIGTERM]},
        {"program": "train", "argv": STOPPABLE + ["--out", str(interrupt)], "signal": [AT_STEP, 2, signal.SIGINT]},
    ], tmp_path)
    assert done.returncode == 0 and results is not None, done.stderr[-3000:]
    for result, run, status, name, step in ((results[0], term, 143, "SIGTERM", 5), (results[1], interrupt, 130,
                                                                                     "SIGINT", 2)):
        assert result["status"] == status and result["traceback"] is None and result["handlers_restored"], result
        line = result["stderr"].strip()
        assert line.count("\n") == 0 and f"interrupted by {name} at step {step}" in line, line
        command = "python -m codaar.train " + " ".join(STOPPABLE + ["--out", str(run), "--resume"])
        assert line.endswith(f"resume with: {command}"), line
        assert latest_step(run) == step and ckpt.verify(ckpt.resolve_checkpoint(run)) is None
        assert str(ckpt.resolve_checkpoint(run)) in line
    assert f"{'SIGTERM'}: training stops at the end of this step" in done.stderr

    main(STOPPABLE + ["--out", str(tmp_path / "straight")])
    for run in (term, interrupt):
        main(STOPPABLE + ["--out", str(run), "--resume"])
        assert_same_run(tmp_path / "straight", run)
    capsys.readouterr()
    straight = {r["step"]: r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")}
    resumed = read_metrics(term / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [3, 4, 5, 6, 8, 9, 12]  # the stop is a log point of its own
    for record in resumed:  # windows that start at the same step log the same values
        if record["step"] >= 8:
            same = {k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS}
            assert same == {k: v for k, v in straight[record["step"]].items() if k not in WALL_CLOCK_FIELDS}


def test_a_second_signal_stops_at_once_and_leaves_latest_whole(tmp_path, capsys):
    """The second SIGTERM lands while the first one's checkpoint is being published (just before its
    folder is renamed into place): the process exits at once, status 143, and `latest` names a
    complete checkpoint, which verifies; the run resumes from it to the uninterrupted result."""
    run = tmp_path / "run"
    # os.replace: the 1st publishes config.json, the 2nd and 3rd step 4 (its folder, then latest), the 4th step 5
    done, results = run_children([{"program": "train", "argv": STOPPABLE + ["--out", str(run)],
                                   "signals": [[AT_STEP, 5, signal.SIGTERM], ["os:replace", 4, signal.SIGTERM]]}],
                                 tmp_path)
    assert done.returncode == 143 and results is None, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == ("SIGTERM again: training stops at once (the last complete "
                                                   "checkpoint is kept)")
    # the background writer may finish publishing step 5 before the main thread exits: either way
    # `latest` names a complete checkpoint
    kept = latest_step(run)
    assert kept in (4, 5) and ckpt.verify(ckpt.resolve_checkpoint(run)) is None
    capsys.readouterr()
    main(STOPPABLE + ["--out", str(run), "--resume"])
    # whatever the cut-short publish of step 5 left (a staging folder, a pointer file) is gone
    assert not list((run / "checkpoints").glob(".*")), list((run / "checkpoints").iterdir())
    main(STOPPABLE + ["--out", str(tmp_path / "straight")])
    assert_same_run(tmp_path / "straight", run)
