"""`python -m codaar.evaluate CHECKPOINT`: the downstream protocols of a pretrained CoDAAR model.

* AVE-style event classification (head: Linear -> max over T -> Linear; CE), every direction; the
  authors' batch-wise macro "precision" and plain accuracy;
* AVVP-style segment localisation (per-segment 4-Linear head; BCE), precision / recall / F1 at 0.5
  over all segment x class cells (the paper's "segment-level accuracy" is the precision);
* zero-shot retrieval by cosine similarity of time-mean code rows, Recall@1/5/10 both ways;
* cross-dataset transfer (`--transfer-data`, `--class-map`), tables like the paper's Tables 1-3,
  and PNG plots (codebook usage, index agreement over training, PCA of same-index codewords).

`--protocol clean` (default) or `official` (the authors' scripts as coded) or `both`; see
`codaar.evaluate.protocols` for exactly what differs. A user error (no checkpoint, data that does
not fit the model, missing labels, an output that would overwrite an input or cannot be written, a
full disk) prints one line and exits with status 2. Interrupted (SIGINT, SIGTERM), it leaves the
output folder as it was, says so in one line and exits with 130 or 143.

`python -m codaar.evaluate baselines [--data DIR | --preset P ...]`: a data set's reference
baselines, without a checkpoint (`codaar.evaluate.baselines`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import torch

from codaar.data import DataFormatError, build_synthetic, load_dataset
from codaar.data.flags import add_synthetic_flags, synthetic_config_of
from codaar.evaluate.baselines import BaselineSettings, markdown, run_baselines
from codaar.evaluate.curve import transfer_curve
from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.protocols import AVE_DEFAULTS, AVVP_DEFAULTS, PROTOCOLS
from codaar.evaluate.run import TASKS, evaluate
from codaar.runtime.interrupts import Interrupted, interrupted_line, interruptible
from codaar.runtime.outputs import OutputError, check_output, os_error_line
from codaar.runtime.publish import replace_files

BASELINES = "baselines"  # the subcommand; any other first argument is a checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m codaar.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog=f"A data set's reference baselines, without a checkpoint: python -m "
                                       f"codaar.evaluate {BASELINES} --help (a run folder named {BASELINES}: "
                                       f"./{BASELINES}).")
    p.add_argument("checkpoint", help="a run folder (uses checkpoints/latest) or a checkpoint folder")
    p.add_argument("--data", help="data folder in the project's format (default: the built-in data set the "
                   "checkpoint was pretrained on, from its config)")
    p.add_argument("--data-preset", help="built-in data set preset instead (default|paper|avvp)")
    p.add_argument("--data-seed", type=int, help="seed of the built-in data set (default: the checkpoint's)")
    p.add_argument("--protocol", default="clean", choices=PROTOCOLS + ("both",))
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--head-input", default="row", choices=("row", "code"),
                   help="row: full codebook row at the modality's own index (authors); code: own codeword "
                   "(clean only)")
    for task, d in (("ave", AVE_DEFAULTS), ("avvp", AVVP_DEFAULTS)):
        p.add_argument(f"--{task}-lr", type=float, default=d.lr)
        p.add_argument(f"--{task}-batch-size", type=int, default=d.batch_size)
        p.add_argument(f"--{task}-epochs", type=int, default=d.epochs,
                       help="official: the authors' n_epoch (head epochs = n_epoch - checkpoint epoch - 1)")
    p.add_argument("--transfer-data", help="cross-dataset: score on this data folder (data set B)")
    p.add_argument("--transfer-preset", help="cross-dataset: score on this built-in preset (data set B)")
    p.add_argument("--transfer-seed", type=int, help="seed of the built-in data set B")
    p.add_argument("--class-map", help="JSON or CSV: class name in the training data -> class name in data set B")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/eval)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--name", help="row label in the tables (default: the run folder's name)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--curve", action="store_true", help="score every saved checkpoint of the run (clean protocol, "
                   "--tasks, every cross-modal direction) and plot transfer, codebook usage and index agreement "
                   "against the step; tables give the steps to reach 95%% of the final transfer (curve.md)")
    p.add_argument("--curve-every", type=int, default=1, metavar="N", help="with --curve: every Nth checkpoint "
                   "(and the last)")
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [BASELINES]:
        return baselines(argv[1:])
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    out = Path(args.out) if args.out else None
    if out is None:
        ckpt_path = Path(args.checkpoint)
        out = (ckpt_path if (ckpt_path / "config.json").is_file() else ckpt_path.parent.parent) / "eval"
    try:
        with interruptible():
            result = run_cli(args, protocols, out)
    except (EvaluationError, OutputError) as exc:
        _fail("python -m codaar.evaluate", str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail("python -m codaar.evaluate", os_error_line(exc, out))
    except Interrupted as exc:
        print(f"python -m codaar.evaluate: {interrupted_line(exc, out)}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    report = out / ("curve.md" if args.curve else "tables.md")
    print(report.read_text())
    print(f"written: {report}, {report.with_suffix('.json').name}" + ("" if args.no_plots else ", *.png"))
    return result


def run_cli(args: argparse.Namespace, protocols: tuple[str, ...], out: Path) -> dict:
    if args.curve:
        if args.curve_every < 1:
            raise EvaluationError(f"--curve-every: expected an integer >= 1, found {args.curve_every}")
        curve = transfer_curve(args.checkpoint, every=args.curve_every, tasks=tuple(t for t in args.tasks.split(",")
                                                                                   if t and t != "retrieval"),
                               ave={"epochs": args.ave_epochs, "lr": args.ave_lr, "batch_size": args.ave_batch_size},
                               avvp={"epochs": args.avvp_epochs, "lr": args.avvp_lr,
                                     "batch_size": args.avvp_batch_size},
                               out=out, plots=not args.no_plots, log=lambda s: print(s, file=sys.stderr))
        return curve
    return evaluate(
        args.checkpoint, data=args.data, data_preset=args.data_preset, data_seed=args.data_seed, protocols=protocols,
        tasks=tuple(t for t in args.tasks.split(",") if t), head_input=args.head_input,
        ave={"lr": args.ave_lr, "batch_size": args.ave_batch_size, "epochs": args.ave_epochs},
        avvp={"lr": args.avvp_lr, "batch_size": args.avvp_batch_size, "epochs": args.avvp_epochs},
        transfer_data=args.transfer_data, transfer_preset=args.transfer_preset, transfer_seed=args.transfer_seed,
        class_map=args.class_map, out=out, plots=not args.no_plots, name=args.name,
        log=lambda s: print(s, file=sys.stderr))


def build_baselines_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m codaar.evaluate {BASELINES}",
                                description="Score the reference baselines of a data set: within-modality ceiling, "
                                            "random projection and linear CCA on the raw features "
                                            "(codaar/evaluate/baselines.py), with the clean AVE protocol; prints a "
                                            "markdown table, and with --out writes OUT.json and OUT.md.")
    p.add_argument("--data", type=Path, help="a data set folder instead of the built-in preset")
    add_synthetic_flags(p)
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md (a .json/.md suffix is dropped)")
    p.add_argument("--head-lr", type=float, help="learning rate of the AVE head (default 1e-2)")
    p.add_argument("--head-epochs", type=int, help="epochs of the AVE head (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: tiny heads run slower "
                                                         "on more threads of a busy machine)")
    return p


def baselines(argv: list[str]) -> dict:
    """`python -m codaar.evaluate baselines ...`: the report of `run_baselines`, printed as a table (and
    written to OUT.json / OUT.md with --out). A user error prints one line and exits with status 2."""
    args = build_baselines_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    stem = files = None
    if args.out is not None:
        stem = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
        files = (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md"))
    try:
        for path in files or ():
            check_output(path, {"--data": args.data})
        data = load_dataset(args.data) if args.data is not None else build_synthetic(synthetic_config_of(args))
        settings = BaselineSettings()
        head = {k: v for k, v in (("lr", args.head_lr), ("epochs", args.head_epochs)) if v is not None}
        settings = dataclasses.replace(settings, head=dataclasses.replace(settings.head, **head))
        report = run_baselines(data, settings, log=lambda line: print(line, file=sys.stderr))
        command = f"python -m codaar.evaluate {BASELINES} " + shlex.join(argv)
        report["command"] = command
        text = markdown(report, command)
        print(text)
        if stem is not None:
            replace_files({files[0]: json.dumps(report, indent=1) + "\n", files[1]: text})
            print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    except (DataFormatError, ValueError, RuntimeError) as exc:
        _fail(f"python -m codaar.evaluate {BASELINES}", str(exc))
    except OSError as exc:
        _fail(f"python -m codaar.evaluate {BASELINES}", os_error_line(exc, args.out))
    return report


def _fail(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def cli() -> None:
    """The `codaar-evaluate` console script: exit status 0 on success (main returns its results)."""
    main()


if __name__ == "__main__":
    main()
