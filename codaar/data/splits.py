"""Split problems that make a result wrong without any error: a clip listed twice in one split (it
weighs double in training and scoring), and clips shared by the splits a protocol keeps apart
(`HELD_APART`: a head scored on clips it was trained on). The pretraining split may hold every clip
(imports and extraction pretrain on all clips, without labels), so it is not compared with the others.

`python -m codaar.data inspect` reports them; train and evaluate refuse them unless the user allows
it (`--allow-split-problems`)."""

from __future__ import annotations

import numpy as np

HELD_APART = ("train", "val", "test")
ALLOW_FLAG = "--allow-split-problems"


def split_problems(splits: dict) -> list[str]:
    """One phrase per problem of `splits` (name -> clip indices): duplicates, then overlaps."""
    problems = []
    unique = {}
    for name in sorted(splits):
        clips = np.asarray(splits[name]).reshape(-1)
        unique[name], counts = np.unique(clips, return_counts=True)
        repeated = unique[name][counts > 1]
        if repeated.size:
            problems.append(f"split {name!r} lists {repeated.size} clip(s) more than once (e.g. clip "
                            f"{int(repeated[0])}, {int(counts.max())} times)")
    present = [name for name in HELD_APART if name in unique]
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            shared = np.intersect1d(unique[a], unique[b], assume_unique=True)
            if shared.size:
                problems.append(f"splits {a!r} and {b!r} share {shared.size} clip(s) (e.g. clip {int(shared[0])})")
    return problems


def refusal(data, what: str) -> str | None:
    """One line refusing `data` for `what` when its splits have problems; None when they have none."""
    problems = split_problems(data.splits)
    if not problems:
        return None
    where = data.root if data.root is not None else "the data set"
    return (f"data {where}: " + "; ".join(problems) + f" ({what} refuses them; pass {ALLOW_FLAG} to accept them)")
