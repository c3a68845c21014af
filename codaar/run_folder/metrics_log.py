"""A run's `metrics.jsonl`: one JSON object per log point of the trainer (every `--log-every`
steps, at every checkpoint and at the last step), read by its summary on resume, the evaluation's
plots and curves, and the ablation tables (importable without the training loop).

A record holds `step` (the log point), `steps` (how many steps it covers: those since the previous
log point) and each logged value combined over those steps by `how_combined`: counts summed, the
codebooks' state as it was at the log point, every other value the mean over the steps.
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
# Fields measured by the wall clock: two runs that train exactly alike log different values.
WALL_CLOCK_FIELDS = ("data_wait_ms", "step_ms", "clips_per_second", "mfu")
# Per-step counts: a record holds their sum over its steps.
SUMMED_FIELDS = ("codes_reset", "update_skipped")
# The state at the log point (of the codebooks, or a running count): a record holds its last value.
STATE_PREFIXES = ("codes_recent/", "codes_dead/", "max_abs_codeword/", "skipped_steps")


def how_combined(key: str) -> str:
    """How a record combines a value over its steps: "sum", "last" or "mean"."""
    if key in SUMMED_FIELDS:
        return "sum"
    return "last" if key.startswith(STATE_PREFIXES) else "mean"


def read_metrics(path: Path, last: int | None = None) -> list[dict]:
    """The records logged in `path` (none if the file does not exist), or only the `last` ones."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if last is not None:
        lines = lines[-last:]
    return [json.loads(line) for line in lines if line.strip()]
