"""Transfer over training: every saved checkpoint of a run (or every Nth) scored with the same
protocol, beside the codebook usage and index agreement the run logged at every step.

The number that judges a recipe is `steps_to_95`: the first checkpoint step whose cross-modal
transfer reaches 95% of the final checkpoint's. Keep the checkpoints to score with the trainer's
`--checkpoint-every N --keep-checkpoints M` (M large enough to keep them all).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codaar.evaluate import tables
from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.features import load_eval_data, load_pretrained
from codaar.pretrained import read_paths
from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.metrics_log import METRICS_FILE, read_metrics
from codaar.runtime.outputs import check_output
from codaar.runtime.publish import staged_files

TRANSFER_SHARE = 0.95


def checkpoints_of(run: Path, every: int = 1) -> list[Path]:
    """The run's checkpoints that verify, oldest first: every `every`-th one and always the last."""
    root = Path(run) / "checkpoints"
    folders = sorted(p for p in root.glob("step-*") if p.is_dir() and ckpt.verify(p) is None)
    if not folders:
        raise EvaluationError(f"{root}: no checkpoint that verifies (train with --checkpoint-every N "
                              f"--keep-checkpoints M to keep the ones to score)")
    picked = folders[::every]
    return picked if picked[-1] == folders[-1] else picked + [folders[-1]]


def transfer_curve(run: str | Path, every: int = 1, tasks=("ave",), ave: dict | None = None,
                   avvp: dict | None = None, out: str | Path | None = None, plots: bool = True, log=print,
                   allow_split_problems: bool = False) -> dict:
    """Score each picked checkpoint (clean protocol, every cross-modal direction of each task: ave,
    avvp); returns and writes {"points": [{step, transfer, transfer/<task>, per direction}], "steps_to_95",
    "logged": per-step usage/agreement}. transfer: the mean over the tasks of each task's mean."""
    if not tasks or any(task not in ("ave", "avvp") for task in tasks):
        raise EvaluationError(f"--tasks: a transfer curve scores ave and/or avvp, found {list(tasks)}")
    from codaar.evaluate.run import evaluate  # run imports this module's neighbours, not this module

    run = Path(run)
    folders = checkpoints_of(run, every)
    first = load_pretrained(folders[0])
    data = load_eval_data(first)
    if out is not None:
        check_output(out, read_paths(first, data))
    mods = first.modalities
    directions = [(s, t) for s in mods for t in mods if s != t]
    points = []
    for folder in folders:
        result = evaluate(folder, protocols=("clean",), tasks=tasks, directions=directions, ave=ave, avvp=avvp,
                          plots=False, eval_data=data, log=lambda s: None, allow_split_problems=allow_split_problems)
        point = {"step": int(ckpt.read_meta(folder)["step"])}
        for task in tasks:
            values = {f"{task} {tables.arrow(s, t)}": result["clean"][task][s][t]["precision"] for s, t in directions}
            point.update(values)
            point[f"transfer/{task}"] = float(np.mean(list(values.values())))
        point["transfer"] = float(np.mean([point[f"transfer/{task}"] for task in tasks]))
        points.append(point)
        log(f"step {point['step']}: cross-modal transfer {point['transfer']:.1f}")
    final = points[-1]["transfer"]
    reached = [p["step"] for p in points if p["transfer"] >= TRANSFER_SHARE * final]
    curve = {"run": str(run), "tasks": list(tasks), "points": points, "final_transfer": final,
             "steps_to_95": reached[0] if reached else None, "logged": logged_health(run, mods)}
    if out is not None:
        write_curve(curve, Path(out), plots)
    return curve


def logged_health(run: Path, modalities) -> dict[str, list[float]]:
    """Per step from metrics.jsonl: codes each modality used within the active window, index agreement."""
    records = read_metrics(run / METRICS_FILE)
    keys = [k for k in (records[0] if records else {}) if k.startswith(("codes_recent/", "agreement/"))]
    return {"step": [r["step"] for r in records], **{k: [r[k] for r in records] for k in keys}}


def write_curve(curve: dict, out: Path, plots: bool) -> None:
    with staged_files(out) as staging:  # out gets every file or none, even when interrupted
        _write_curve_files(curve, staging, plots)


def _write_curve_files(curve: dict, out: Path, plots: bool) -> None:
    # per task and direction
    header = ["step", "transfer"] + [k for k in curve["points"][0] if k not in ("step", "transfer")]
    body = [[str(p["step"])] + [tables.fmt(p[k]) for k in header[1:]] for p in curve["points"]]
    text = tables.markdown(
        f"Cross-modal transfer over training ({curve['run']})", header, body,
        [f"transfer: mean over the tasks of the mean over their cross-modal directions (clean protocol; AVE: the "
         f"authors' batch-wise macro precision, AVVP: precision over segment x class cells, %); "
         f"steps to reach {TRANSFER_SHARE:.0%} of the final transfer: {curve['steps_to_95']}"])
    tables.write(out, "curve", text, curve)
    if plots:
        from codaar.evaluate import plots as plotting

        plotting.plot_curve(curve, out / "transfer_curve.png")
