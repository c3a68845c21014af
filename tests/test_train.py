"""`python -m codaar.train`: runs, refuses to lose a run, resumes exactly after SIGKILL, and under
DDP (2 CPU processes, gloo) one step equals the single-process step on the union of the batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.metrics_log import WALL_CLOCK_FIELDS, read_metrics
from codaar.train import main
from codaar.train.config import build_parser, parse_config

TINY = ["--dim", "32", "--num-codes", "16", "--temporal-ffn-dim", "64", "--text-lstm-dim", "16",
        "--pretrain-clips", "120", "--batch-size", "20", "--no-progress"]


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt.resolve_checkpoint(run) / "tensors.safetensors")


def assert_same_run(a: Path, b: Path, tol: float = 0.0) -> None:
    ta, tb = final_tensors(a), final_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        if tol == 0.0:
            assert torch.equal(ta[key], tb[key]), key
        else:
            torch.testing.assert_close(ta[key], tb[key], rtol=tol, atol=tol, msg=key)


def logged_values(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl without the wall-clock fields (every value as logged)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS} for line in lines]


def test_help_documents_every_option_with_its_default():
    text = build_parser().format_help()
    for action in build_parser()._actions:
        if action.option_strings and action.dest not in ("help", "config"):
            assert "(default:" in action.help, action.dest
    assert "--num-codes" in text and "(default: 800)" in text


def exits_with_usage_error(capsys, run, *expected: str) -> None:
    """A user error: status 2, one line on stderr naming the problem, no traceback."""
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)


def test_a_finished_run_resumed_trains_nothing_and_summarises_its_last_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    args = TINY + ["--out", str(run), "--max-steps", "12", "--modalities", "video,audio", "--log-every", "5"]
    first = main(args)
    capsys.readouterr()
    again = main(args + ["--resume", "auto"])
    printed = capsys.readouterr().out
    assert "already finished at step 12: nothing to train" in printed and "nan" not in printed, printed
    assert again["steps"] == 12 and again["last_epoch_mean"] == first["last_epoch_mean"]
    assert again["warnings"] == [] and first["warnings"] == []
    for m in ("video", "audio"):  # the logged window of the last step stands in for the epoch's indices
        assert 0 < again[f"codes_used/{m}"] == first[f"codes_recent/{m}"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [5, 10, 12]  # log points and the end

def test_config_file_then_flags(tmp_path, capsys):
    settings = tmp_path / "run.toml"
    settings.write_text('epochs = 3\nmodalities = ["video", "audio"]\nlr = 1e-3\n')
    cfg = parse_config(["--config", str(settings), "--lr", "2e-4"])
    assert cfg.epochs == 3 and cfg.model.modalities == ("video", "audio") and cfg.lr == 2e-4
    (tmp_path / "bad.json").write_text('{"epoch": 3}')
    exits_with_usage_error(capsys, lambda: parse_config(["--config", str(tmp_path / "bad.json")]),
                           "setting 'epoch'", "an unknown name")


def test_run_summary_metrics_and_refusal_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    summary = main(TINY + ["--out", str(run), "--max-steps", "4", "--modalities", "video,audio", "--log-every", "3"])
    printed = capsys.readouterr().out
    assert "CoDAAR pretraining: 4 steps" in printed and "index agreement video-audio" in printed
    assert "clips/s" in printed and "GFLOP per step (no MFU on cpu)" in printed
    assert summary["steps"] == 4 and "codes_used/video" in summary and summary["step_flops"] > 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line["steps"]) for line in lines] == [(3, 3), (4, 1)]  # log points, the steps they cover
    assert {"step_ms", "data_wait_ms", "clips_per_second"} <= lines[0].keys() <= {*lines[0], "mfu"}
    assert {"loss", "rec/audio", "commit/video", "dqa", "cpc", "perplexity/audio", "agreement/video-audio",
            "cpc_acc/audio<-video", "codes_reset"} <= lines[0].keys()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["video_input"] == "vector" and config["train"]["max_steps"] == 4
    exits_with_usage_error(capsys, lambda: main(TINY + ["--out", str(run), "--max-steps", "4"]), "already holds a run")
    exits_with_usage_error(capsys, lambda: main(TINY + ["--out", str(run), "--resume", "--dim", "16",
                                                        "--modalities", "video,audio"]),
                           "setting 'dim' (--dim) was 32 in the run, now 16")


def first_divergence(a: list[dict], b: list[dict]) -> str | None:
    """Where two runs' logged values first differ (a step, the fields), or None: a failed exactness
    check then says whether the runs parted before the resume (the arithmetic is not repeatable) or
    after it (the resume is not exact)."""
    for x, y in zip(a, b):
        if x != y:
            fields = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            return f"step {x.get('step')}: {fields[:6]}"
    return None if len(a) == len(b) else f"{len(a)} logged steps against {len(b)}"


# Generous limits: on a loaded machine (six test sessions on two cores) a 24-step run took 5 minutes;
# a limit that is too tight fails the test for a reason it does not test.
RUN_LIMIT_S = 1500


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = TINY + ["--epochs", "4", "--checkpoint-every", "2"]  # 24 steps
    train = [sys.executable, "-m", "codaar.train", *args]  # both runs in fresh, identical processes
    subprocess.run(train + ["--out", str(tmp_path / "straight")], check=True, capture_output=True,
                   timeout=RUN_LIMIT_S)

    killed = tmp_path / "killed"
    command = train + ["--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + RUN_LIMIT_S
    while time.monotonic() < deadline and process.poll() is None:
        if latest.is_file() and int(latest.read_text().strip().split("-")[1]) >= 6:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = int(latest.read_text().strip().split("-")[1])
    assert 6 <= interrupted_at < 24

    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 25, 2))  # a log point at each checkpoint: none logged twice, none missing
    parted = first_divergence(logged_values(tmp_path / "straight"), logged_values(killed))
    assert parted is None, f"the runs part at {parted}; killed after step {interrupted_at}, resumed from there"
    assert_same_run(tmp_path / "straight", killed)


def test_float32_tracks_float64(tmp_path):
    """The authors train in float64; float32 follows the same loss trajectory within noise."""
    args = TINY + ["--epochs", "2", "--modalities", "video,audio", "--dropout", "0", "--log-every", "1"]
    main(args + ["--out", str(tmp_path / "f32")])
    main(args + ["--out", str(tmp_path / "f64"), "--float64"])
    f32, f64 = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("f32", "f64"))
    assert len(f32) == len(f64) == 12
    for a, b in zip(f32, f64):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])


def torchrun(tmp_path: Path, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "codaar.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_LIMIT_S, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_equals_single_process_and_resumes(tmp_path):
    exact = TINY + ["--float64", "--dropout", "0", "--batch-size", "8", "--pretrain-clips", "48"]
    main(exact + ["--out", str(tmp_path / "single"), "--max-steps", "2"])
    torchrun(tmp_path, *exact, "--out", str(tmp_path / "ddp"), "--max-steps", "2")
    # the two ranks' halves of each batch give the single-process step on the whole batch
    assert_same_run(tmp_path / "single", tmp_path / "ddp", tol=1e-10)

    torchrun(tmp_path, *exact, "--out", str(tmp_path / "ddp"), "--max-steps", "4", "--resume")
    torchrun(tmp_path, *exact, "--out", str(tmp_path / "ddp_straight"), "--max-steps", "4")
    assert_same_run(tmp_path / "ddp_straight", tmp_path / "ddp")


@pytest.mark.slow
def test_ddp_with_per_clip_text_equals_single_process(tmp_path):
    # the hard preset's captions have padding: CPC's negatives come from both ranks with their masks
    exact = TINY + ["--data-preset", "hard", "--float64", "--dropout", "0", "--batch-size", "8",
                    "--pretrain-clips", "48", "--max-steps", "2"]
    main(exact + ["--out", str(tmp_path / "single")])
    torchrun(tmp_path, *exact, "--out", str(tmp_path / "ddp"))
    assert_same_run(tmp_path / "single", tmp_path / "ddp", tol=1e-10)
