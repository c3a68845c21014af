"""`python -m codaar.ablate`: component, cascade-order and unimodal-baseline ablations (paper Tables 5-7).

For every variant and seed: pretrain with `python -m codaar.train` (a subprocess; `--jobs` at once),
then the clean downstream protocol (`codaar.evaluate`, AVE + AVVP, V->A and A->V plus same-modality
references), then mean ± std over seeds in `<out>/ablation.md` and `<out>/ablation.json`.

Variants (train flags):
  full          (none)                                   the complete model
  no-cpc        --no-cpc                                  Tables 5/6 "without CPC"
  cpc-only      --no-dta --no-csa --no-dqa                "CPC only"
  no-csa        --no-csa
  no-dta        --no-dta
  no-dqa        --no-dqa
  unimodal      --no-dta --no-csa --no-dqa --no-cpc       baseline without any cross-modal alignment:
                each modality quantizes its own latents into its own codebook, trained by reconstruction
                and commitment only (no shared-index mechanism, no cross-modal loss)
  cascade-X-Y-Z --cascade X,Y,Z                           Table 7 (CSA order)
  init-official, init-kmeans, init-aligned-kmeans  --codebook-init ...   codebook inits (full: the default
                recipe, whose init is aligned-kmeans)
  preset-official, preset-recommended  --preset ...       the authors' recipe against the default one

Studies: components = full, no-cpc, cpc-only, no-csa, no-dta, no-dqa; cascade = every CSA order;
unimodal = full, unimodal; inits = full, init-official, init-kmeans; recipes = preset-official,
preset-recommended. Runs already in `<out>/runs/<variant>/seed<seed>` are reused (delete the
folder to retrain).

Reduced version (minutes on a 2-core CPU; past the first dead-code reset at step ~301):
  python -m codaar.ablate --variants full,no-csa,no-cpc,unimodal --seeds 43,44,45 --steps 330 \
      --dim 64 --num-codes 128 --temporal-ffn-dim 256 --text-lstm-dim 32 --batch-size 40 \
      --pretrain-clips 1600 --jobs 2 --out runs/ablation-small
Full version (the trainer's defaults: K=800, D=256, 456 steps, ~4 min per run on this CPU, so ~3 h):
  python -m codaar.ablate --studies components,cascade,unimodal --seeds 43,44,45 --out runs/ablation
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from codaar.evaluate import tables
from codaar.evaluate.run import TASKS
from codaar.model.config import KNOWN_MODALITIES
from codaar.run_folder.metrics_log import METRICS_FILE, read_metrics
from codaar.runtime.outputs import OutputError, check_output, os_error_line
from codaar.runtime.publish import staged_files
from codaar.settings import CommandLineParser, add_settings, parse_settings, setting, settings

COMPONENTS = {
    "full": [], "no-cpc": ["--no-cpc"], "cpc-only": ["--no-dta", "--no-csa", "--no-dqa"], "no-csa": ["--no-csa"],
    "no-dta": ["--no-dta"], "no-dqa": ["--no-dqa"], "unimodal": ["--no-dta", "--no-csa", "--no-dqa", "--no-cpc"],
    # codebook initialisation; `full` is the trainer's default recipe (the recommended preset: aligned init)
    "init-official": ["--codebook-init", "official"], "init-kmeans": ["--codebook-init", "kmeans"],
    "init-aligned-kmeans": ["--codebook-init", "aligned-kmeans"],
    # recipes: the authors' code against the default
    "preset-official": ["--preset", "official"], "preset-recommended": ["--preset", "recommended"],
}
SHORT = {"a": "audio", "v": "video", "t": "text"}
STUDIES = ("components", "cascade", "unimodal", "inits", "recipes")


class AblationError(ValueError):
    """A bad variant, study or seed list, or a training run that failed (the command line exits 2)."""


def cascade_variants(modalities) -> dict[str, list[str]]:
    return {"cascade-" + "-".join(m[0] for m in order): ["--cascade", ",".join(order)]
            for order in itertools.permutations(modalities)}


def variant_flags(name: str) -> list[str]:
    """The training flags of a variant; `a+b` combines two, e.g. `no-csa+init-official` (a component
    removed under the authors' codebook init, as in the paper's tables)."""
    if "+" in name:
        return [flag for part in name.split("+") for flag in variant_flags(part)]
    if name in COMPONENTS:
        return list(COMPONENTS[name])
    if name.startswith("cascade-"):
        letters = name.split("-")[1:]
        if all(x in SHORT for x in letters):
            return ["--cascade", ",".join(SHORT[x] for x in letters)]
    raise AblationError(f"--variants: unknown variant {name!r}; expected one of {sorted(COMPONENTS)} or "
                        f"cascade-<order> such as cascade-t-a-v, or several joined by '+'")


def study_variants(studies, modalities) -> list[str]:
    names: list[str] = []
    for study in studies:
        if study == "components":
            names += ["full", "no-cpc", "cpc-only", "no-csa", "no-dta", "no-dqa"]
        elif study == "cascade":
            names += list(cascade_variants(modalities))
        elif study == "unimodal":
            names += ["full", "unimodal"]
        elif study == "inits":
            names += ["full", "init-official", "init-kmeans"]
        elif study == "recipes":
            names += ["preset-official", "preset-recommended"]
        else:
            raise AblationError(f"--studies: unknown study {study!r}; expected components, cascade, unimodal, inits, "
                                f"recipes")
    return list(dict.fromkeys(names))


def flag_values(args: list[str], flags) -> dict[str, list[str]]:
    """The values given to each of `flags` in a command line (`--flag value` or `--flag=value`)."""
    found: dict[str, list[str]] = {flag: [] for flag in flags}
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in found and (equals or i + 1 < len(args)):
            found[name].append(value if equals else args[i + 1])
    return found


def train_run(out: Path, flags: list[str], seed: int, size: list[str], log) -> Path:
    run = out / "runs" / flags[0] / f"seed{seed}"
    run.parent.mkdir(parents=True, exist_ok=True)
    # --resume auto: a run killed earlier continues from its newest verified checkpoint to the result an
    # uninterrupted one reaches, a finished one trains no step, and settings that changed are refused.
    cmd = [sys.executable, "-m", "codaar.train", "--out", str(run), "--seed", str(seed), "--no-progress",
           "--resume", "auto", *size, *flags[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    started = time.perf_counter()
    with open(run.parent / f"seed{seed}.log", "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()  # here, a full disk stops the ablation with its own message, not only the training's
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise AblationError(f"training failed (exit {rc}): {' '.join(cmd)}; see {run.parent / f'seed{seed}.log'}")
    log(f"trained {run} in {time.perf_counter() - started:.0f} s")
    return run


def final_agreement(run: Path, window: int = 50) -> dict[str, float]:
    """Index agreement per pair (mean of the last `window` steps) and codebook usage at the end:
    codes each modality used within the quantizer's active window (100 updates)."""
    records = read_metrics(run / METRICS_FILE, last=window)
    if not records:
        return {}
    row = {k: float(np.mean([r[k] for r in records])) for k in records[-1] if k.startswith("agreement/")}
    row.update({k: float(v) for k, v in records[-1].items() if k.startswith("codes_recent/")})
    return row


def score_run(run: Path, ave_epochs: int | None, avvp_epochs: int | None, tasks) -> dict:
    from codaar.evaluate import evaluate
    from codaar.train.config import TrainConfig

    modalities = TrainConfig.from_dict(json.loads((run / "config.json").read_text())["train"]).model.modalities
    directions = [(s, t) for s in modalities for t in modalities if s != t]  # with text: T->A, A->T, ...
    result = evaluate(run, protocols=("clean",), tasks=tasks, directions=directions,
                      ave={"epochs": ave_epochs}, avvp={"epochs": avvp_epochs}, plots=False, log=lambda s: None)
    row = {}
    for task, keys in (("ave", ("precision", "accuracy")), ("avvp", ("precision", "f1"))):
        if task not in result["clean"]:
            continue
        pairs = directions + [("video", "video"), ("audio", "audio")]
        for s, t in pairs:
            if s in result["clean"][task] and t in result["clean"][task][s]:
                for key in keys:
                    row[f"{task} {key} {tables.arrow(s, t)}"] = result["clean"][task][s][t][key]
    row.update(final_agreement(run))
    return row


MAIN_COLUMNS = ["ave precision V->A", "ave precision A->V", "avvp precision V->A", "avvp precision A->V"]


def summarise(rows: dict[str, list[dict]]) -> tuple[str, dict]:
    summary = {}
    for variant, per_seed in rows.items():
        keys = list(per_seed[0])
        summary[variant] = {k: {"mean": float(np.mean([r[k] for r in per_seed])),
                                "std": _std([r[k] for r in per_seed]),
                                "values": [r[k] for r in per_seed]} for k in keys}
        main = [np.mean([r[k] for k in MAIN_COLUMNS if k in r]) for r in per_seed]
        summary[variant]["avg"] = {"mean": float(np.mean(main)), "std": _std(main), "values": main}
    columns = [c for c in MAIN_COLUMNS if any(c in s for s in summary.values())] + ["avg"]
    extra = sorted({k for s in summary.values() for k in s} - set(columns))
    header = ["variant", "seeds"] + [c.replace("precision ", "").upper() for c in columns]
    body = [[v, str(len(rows[v]))] + [tables.fmt(s[c]["mean"], s[c]["std"]) if c in s else "-" for c in columns]
            for v, s in summary.items()]
    text = tables.markdown("Ablation (Tables 5-7 layout): cross-modal transfer, mean ± std over seeds", header, body, [
        "AVE: the authors' batch-wise macro precision (%); AVVP: precision at 0.5 over segment x class cells (%); "
        "clean protocol (encoder eval mode, val-split selection on the source modality, held-out test split).",
        "'V->A': head trained on video codes, scored on audio codes."])
    header2 = ["variant"] + extra

    def fmt2(c, s):
        return tables.fmt(s[c]["mean"], s[c]["std"], 3 if c.startswith("agreement") else 1)

    body2 = [[v] + [fmt2(c, s) if c in s else "-" for c in extra] for v, s in summary.items()]
    text += "\n" + tables.markdown("Accuracy, F1, same-modality references and final index agreement",
                                   header2, body2, ["agreement/<a>-<b>: share of frames where the two modalities "
                                                    "pick the same code, mean of the last 50 training steps"])
    return text, summary


@settings
class AblateCommand:
    """Every option of `python -m codaar.ablate`."""

    studies: tuple[str, ...] = setting(("components", "unimodal"), "the studies to run (see the module docstring)",
                                       choices=STUDIES)
    variants: tuple[str, ...] | None = setting(None, "explicit variants instead of --studies; join variants with + "
                                               "to combine them, e.g. no-csa+init-official")
    seeds: tuple[int, ...] = setting((43, 44, 45), "one pretraining per variant and seed", at_least=0)
    modalities: tuple[str, ...] = setting(("video", "audio", "text"), "the modalities trained",
                                          choices=KNOWN_MODALITIES)
    steps: int | None = setting(None, "pretraining steps (none: the trainer's default epochs)", at_least=1)
    dim: int | None = setting(None, "codaar.train --dim (none: the trainer's default)", at_least=1)
    num_codes: int | None = setting(None, "codaar.train --num-codes (none: the trainer's default)", at_least=1)
    temporal_ffn_dim: int | None = setting(None, "codaar.train --temporal-ffn-dim (none: the trainer's default)",
                                           at_least=1)
    text_lstm_dim: int | None = setting(None, "codaar.train --text-lstm-dim (none: the trainer's default)",
                                        at_least=1)
    batch_size: int | None = setting(None, "codaar.train --batch-size (none: the trainer's default)", at_least=1)
    pretrain_clips: int | None = setting(None, "codaar.train --pretrain-clips (none: the trainer's default)",
                                         at_least=1)
    train_args: str = setting("", "extra flags for codaar.train, e.g. '--data-preset avvp'")
    ave_epochs: int | None = setting(None, "AVE head epochs (none: the evaluation's, 30)", at_least=1)
    avvp_epochs: int | None = setting(None, "AVVP head epochs (none: the evaluation's, 50)", at_least=1)
    tasks: tuple[str, ...] = setting(("ave", "avvp"), "the evaluation's tasks", choices=TASKS)
    jobs: int = setting(1, "trainings at once (each single-threaded when > 1)", at_least=1)
    curve: bool = setting(False, "score every kept checkpoint of each run (--tasks ave/avvp, clean) instead of the "
                          "last one: transfer over training and steps to 95% of the final transfer; keep "
                          "checkpoints with --train-args '--checkpoint-every N --keep-checkpoints M'")
    out: str = setting("runs/ablation", "output folder: runs/, ablation.md and ablation.json", metavar="DIR")


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m codaar.ablate", description=__doc__.split("\n\n")[0])
    add_settings(p, AblateCommand)
    return p


def main(argv: list[str] | None = None) -> dict:
    command, _ = parse_settings(build_parser(), AblateCommand, argv)
    from codaar.evaluate import EvaluationError

    try:
        return run_ablation(command, argv)
    except (AblationError, EvaluationError, OutputError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail(os_error_line(exc, command.out))


def _fail(message: str) -> None:
    print(f"python -m codaar.ablate: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_ablation(command: AblateCommand, argv: list[str] | None = None) -> dict:
    modalities = command.modalities
    variants = list(command.variants) if command.variants else study_variants(command.studies, modalities)
    seeds = list(command.seeds)
    size = ["--modalities", ",".join(modalities)]
    for flag, value in (("--max-steps", command.steps), ("--dim", command.dim), ("--num-codes", command.num_codes),
                        ("--temporal-ffn-dim", command.temporal_ffn_dim),
                        ("--text-lstm-dim", command.text_lstm_dim), ("--batch-size", command.batch_size),
                        ("--pretrain-clips", command.pretrain_clips)):
        if value is not None:
            size += [flag, str(value)]
    size += command.train_args.split()
    if command.steps is not None:  # enough epochs for the requested steps
        size += ["--epochs", "1000"]
    out = Path(command.out)
    given = flag_values(size, ("--data", "--config"))
    check_output(out, {f"{flag} of --train-args": values for flag, values in given.items()})
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for v in variants for s in seeds]
    flags = {v: [v, *variant_flags(v)] for v in variants}
    with ThreadPoolExecutor(max_workers=command.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda job: train_run(out, flags[job[0]], job[1], size, _log), jobs)))
    if command.curve:
        return curve_study(runs, variants, seeds, out, command, size, flags, argv, _log)
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    for (v, s), run in runs.items():
        started = time.perf_counter()
        row = score_run(run, command.ave_epochs, command.avvp_epochs, command.tasks)
        rows[v].append(dict(row))
        _log(f"scored {v} seed {s} in {time.perf_counter() - started:.0f} s: " +
             ", ".join(f"{k} {row[k]:.1f}" for k in MAIN_COLUMNS if k in row))
    text, summary = summarise(rows)
    return publish(out, "ablation", text, argv, size, flags, seeds, summary=summary, per_seed=rows)


def publish(out: Path, stem: str, text: str, argv, size, flags, seeds, **results) -> dict:
    """<out>/<stem>.md and .json with the command that made them; prints the tables."""
    command = "python -m codaar.ablate " + shlex.join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command, "train_flags": size, "variants": {v: f[1:] for v, f in flags.items()},
               "seeds": seeds, **results}
    with staged_files(out) as staging:  # both files or neither
        tables.write(staging, stem, text + f"\ncommand: `{command}`\n", payload)
    print(text)
    return payload


def curve_study(runs, variants, seeds, out: Path, command: AblateCommand, size, flags, argv, log) -> dict:
    """Every kept checkpoint of every run scored (`codaar.evaluate --curve`): cross-modal transfer per
    step, mean ± std over seeds, and the steps each recipe needs to reach 95% of its final transfer."""
    from codaar.evaluate.curve import transfer_curve

    curve_tasks = tuple(t for t in command.tasks if t in ("ave", "avvp"))
    curves: dict[str, list[dict]] = {v: [] for v in variants}
    for (v, s), run in runs.items():
        started = time.perf_counter()
        curve = transfer_curve(run, tasks=curve_tasks, ave={"epochs": command.ave_epochs},
                               avvp={"epochs": command.avvp_epochs}, plots=False, log=lambda m: None)
        curves[v].append(curve)
        log(f"curve {v} seed {s} in {time.perf_counter() - started:.0f} s: " + ", ".join(
            f"step {p['step']} {p['transfer']:.1f}" for p in curve["points"]) + f"; 95% at {curve['steps_to_95']}")
    steps = [p["step"] for p in next(iter(curves.values()))[0]["points"]]
    columns = [(f"transfer/{task}", step) for task in curve_tasks for step in steps]
    header = ["variant", "seeds"] + [f"{key.split('/')[1].upper()} @ {step}" for key, step in columns]
    header += ["steps to 95%"]
    body, summary = [], {}
    for v, per_seed in curves.items():
        at = {(key, step): [next(p[key] for p in c["points"] if p["step"] == step) for c in per_seed]
              for key, step in columns}
        reach = [c["steps_to_95"] for c in per_seed]
        summary[v] = {f"{key} @ {step}": vals for (key, step), vals in at.items()}
        summary[v]["steps_to_95"] = reach
        body.append([v, str(len(per_seed))] + [tables.fmt(np.mean(at[c]), _std(at[c])) for c in columns]
                    + [tables.fmt(np.mean(reach), _std(reach), 0)])
    text = tables.markdown("Cross-modal transfer over training, mean ± std over seeds", header, body, [
        "TASK @ step: mean over the cross-modal directions (V->A, A->V, and with text T->A, A->T, T->V, V->T) of the "
        "clean protocol's score at that checkpoint (AVE: the authors' batch-wise macro precision; AVVP: precision "
        "over segment x class cells; %); steps to 95%: the first kept checkpoint whose mean over the tasks reaches "
        "95% of the run's final one"])
    return publish(out, "curves", text, argv, size, flags, seeds, summary=summary, curves=curves)


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


if __name__ == "__main__":
    main()
