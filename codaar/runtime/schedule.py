"""The step-decay learning-rate schedule of the authors' scripts (torch's MultiStepLR, stepped once
per epoch): pretraining and the downstream heads use the same one."""

from __future__ import annotations

from collections.abc import Sequence


def step_decay(lr: float, gamma: float, milestones: Sequence[int], epoch: int) -> float:
    """lr x gamma^(number of milestones <= epoch)."""
    return lr * gamma ** sum(epoch >= m for m in milestones)
