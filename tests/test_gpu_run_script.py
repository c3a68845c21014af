"""`profiles/gpu_run.sh --dry-run` rehearses every step of the GPU script on the CPU at tiny sizes
(install, imports, the test and benchmark files collected, the data set, the trainer's step eager,
--compile, and the command lines of --cuda-graph and --bf16), so that a typo costs no GPU time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_dry_run_passes_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work")}
    env.pop("CODAAR_COMPILE_BACKEND", None)
    done = subprocess.run(["bash", str(ROOT / "profiles" / "gpu_run.sh"), "--dry-run", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "gpu_run: every step passed (dry run)" in done.stdout
    report = (tmp_path / "out" / "train_step.md").read_text()
    for mode in ("eager", "compile", "cuda-graph", "bf16"):
        assert f"## {mode}: 2 steps" in report, report
    assert report.count("- data_wait_ms:") == 4, report
    collected = (tmp_path / "out" / "equivalence.txt").read_text()
    assert "tests collected" in collected and "error" not in collected.lower(), collected[-2000:]
    assert not (tmp_path / "work" / "run-eager").exists()  # the runs' checkpoints are not left behind


def test_the_gpu_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "profiles" / "gpu_run.sh")]).returncode == 0
