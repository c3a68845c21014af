"""A run's `metrics.jsonl`: one JSON object per training step, written by the trainer and read by
its summary on resume, the evaluation's plots and curves, and the ablation tables (importable
without the training loop)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
# Fields measured by the wall clock: two runs that train exactly alike log different values.
WALL_CLOCK_FIELDS = ("data_wait_ms",)


def read_metrics(path: Path, last: int | None = None) -> list[dict]:
    """The records logged in `path` (none if the file does not exist), or only the `last` ones."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if last is not None:
        lines = lines[-last:]
    return [json.loads(line) for line in lines if line.strip()]
