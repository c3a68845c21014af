"""Paper-style result tables (paper Tables 1-3 and 5-7, docs/method.md §8) as markdown and JSON.

Direction "V->A" means: head trained on video, scored on audio (the paper's convention).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SHORT = {"audio": "A", "video": "V", "text": "T"}


def arrow(source: str, target: str) -> str:
    return f"{SHORT[source]}->{SHORT[target]}"


def directions(modalities) -> list[tuple[str, str]]:
    """The paper's column order: V->A, A->V first, then the text directions."""
    order = [("video", "audio"), ("audio", "video"), ("text", "audio"), ("audio", "text"), ("text", "video"),
             ("video", "text")]
    return [(s, t) for s, t in order if s in modalities and t in modalities]


def fmt(value, std=None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if std is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {std:.{digits}f}"


def markdown(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def transfer_row(results: dict, modalities) -> tuple[list[str], list[float]]:
    """Columns AVE <dirs> | AVVP <dirs> | avg, from `evaluate` results of one protocol."""
    header, values = [], []
    for task, key in (("ave", "precision"), ("avvp", "precision")):
        if task not in results:
            continue
        for s, t in directions(modalities):
            header.append(f"{task.upper()} {arrow(s, t)}")
            values.append(results[task].get(s, {}).get(t, {}).get(key, float("nan")))
    finite = [v for v in values if not math.isnan(v)]
    header.append("avg")
    values.append(sum(finite) / len(finite) if finite else float("nan"))
    return header, values


def retrieval_row(results: dict) -> tuple[list[str], list[str]]:
    header, cells = [], []
    for pair, r in results.items():
        if pair.startswith("_"):
            continue
        s, t = pair.split("->")
        header.append(f"{arrow(s, t)} R1 / R5 / R10")
        cells.append(" / ".join(fmt(r[f"R@{k}"]) for k in (1, 5, 10)))
    return header, cells


def write(out: Path, stem: str, text: str, payload) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=float))
