"""The values a training step logs, kept on the device between log points: no step waits for the host.

`StepLog.add` folds one step's scalars into running totals with a few small device operations
(no read-back); `StepLog.read` copies everything the log point needs to the host at once (one
device-to-host copy): each value combined over the steps since the last read
(codaar.run_folder.metrics_log.how_combined) and the divergence guard's findings, the first step at
which a guarded value was not finite (recorded on the device as it happened) and which ones were.

`CodesSeen` marks the codes each modality chose in each of the last steps in a fixed-shape device
mask (`index_fill_`), never `unique()`, whose output size depends on the data and so syncs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from codaar.run_folder.metrics_log import how_combined


@dataclass(frozen=True)
class LogPoint:
    values: dict[str, float]  # combined over `steps` steps
    steps: int
    first_nonfinite_step: int | None  # of a guarded value
    nonfinite: list[str]  # the guarded values that were not finite at some step, in logging order


class StepLog:
    """Running totals of the logged scalars on `device`. `guarded(key)`: whether a non-finite value
    of `key` must stop the run."""

    def __init__(self, device: torch.device, guarded) -> None:
        self.device, self.guarded = device, guarded
        self.keys: tuple[str, ...] | None = None
        self.steps = 0

    def _start(self, values: dict[str, torch.Tensor]) -> None:
        # The keys grouped by dtype, once: each step then stacks each group and casts it once.
        groups: dict[torch.dtype, list[str]] = {}
        for key, value in values.items():
            groups.setdefault(value.dtype, []).append(key)
        self.groups = list(groups.values())
        self.keys = tuple(key for group in self.groups for key in group)
        self.step_keys = set(values)
        count = len(self.keys)
        f64 = dict(device=self.device, dtype=torch.float64)
        self.total = torch.zeros(count, **f64)
        self.last = torch.zeros(count, **f64)
        self.bad = torch.zeros(count, device=self.device, dtype=torch.bool)
        self.first_bad = torch.full((), -1.0, **f64)
        self.is_guarded = torch.tensor([bool(self.guarded(k)) for k in self.keys], device=self.device)

    def add(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Fold in the scalars of `step` (device tensors; nothing is read back)."""
        if self.keys is None:
            self._start(values)
        elif values.keys() != self.step_keys:
            raise RuntimeError(f"StepLog: step {step} logs {sorted(values)}, the steps before {sorted(self.step_keys)}")
        parts = [torch.stack([values[key].detach().reshape(()) for key in group]).double() for group in self.groups]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.total += stacked
        self.last.copy_(stacked)
        bad = ~torch.isfinite(stacked) & self.is_guarded
        self.first_bad.masked_fill_(bad.any() & (self.first_bad < 0), float(step))
        self.bad |= bad
        self.steps += 1

    def read(self) -> LogPoint | None:
        """The steps since the last read, combined (one copy to the host); None if there were none."""
        if not self.steps:
            return None
        host = torch.cat([self.total, self.last, self.bad.double(), self.first_bad.reshape(1)]).tolist()
        count = len(self.keys)
        total, last, bad, first_bad = host[:count], host[count:2 * count], host[2 * count:3 * count], host[-1]
        values = {}
        for key, summed, final in zip(self.keys, total, last):
            how = how_combined(key)
            values[key] = summed if how == "sum" else final if how == "last" else summed / self.steps
        point = LogPoint(values, self.steps, None if first_bad < 0 else int(first_bad),
                         [key for key, flag in zip(self.keys, bad) if flag])
        self.total.zero_()
        self.bad.zero_()
        self.first_bad.fill_(-1.0)
        self.steps = 0
        return point


class CodesSeen:
    """The codes each modality chose in each of the last `window` steps: a [window, K] boolean device
    mask per modality, one row per step, overwritten in turn."""

    def __init__(self, modalities, num_codes: int, window: int, device: torch.device) -> None:
        self.window = window
        self.masks = {m: torch.zeros(window, num_codes, dtype=torch.bool, device=device) for m in modalities}
        self.steps = 0

    def add(self, step: int, indices: dict[str, torch.Tensor]) -> None:
        row = step % self.window
        for m, mask in self.masks.items():
            mask[row].zero_().index_fill_(0, indices[m].reshape(-1), True)
        self.steps += 1

    def counts(self) -> dict[str, int]:
        """Distinct codes each modality chose over the steps seen (at most `window`): reads back."""
        return {m: int(mask.any(0).sum()) for m, mask in self.masks.items()}

    @property
    def full(self) -> bool:
        return self.steps >= self.window


def epoch_mean(records: list[dict], key: str) -> float:
    """The per-step mean of `key` over the steps `records` cover: each record weighs as many steps as
    it logged (older records without `steps`: one each), and a summed count is divided by them."""
    pairs = [(r[key], r.get("steps", 1)) for r in records if key in r]
    steps = sum(weight for _, weight in pairs)
    if not steps:
        return math.nan
    if how_combined(key) == "sum":
        return sum(value for value, _ in pairs) / steps
    return sum(value * weight for value, weight in pairs) / steps
