"""`python -m codaar.train` runs end to end and ends with its summary."""

from __future__ import annotations

import subprocess
import sys


def test_train_entry_point_runs_and_summarises():
    result = subprocess.run(
        [sys.executable, "-m", "codaar.train", "--steps", "3", "--batch-size", "4", "--num-codes", "16",
         "--dim", "8", "--modalities", "video,audio"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "quantizer-only run: 3 steps of B=4 T=10 K=16 D=8" in result.stdout
    assert "agreement video-audio" in result.stdout
    assert "not built yet" in result.stdout  # says plainly that this is not the full trainer yet


def test_train_help_documents_defaults():
    result = subprocess.run([sys.executable, "-m", "codaar.train", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--num-codes" in result.stdout and "(default: 800)" in result.stdout
