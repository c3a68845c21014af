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
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from codaar.data import DataFormatError, build_synthetic, load_dataset
from codaar.data.flags import SyntheticSettings
from codaar.data.synthetic import PRESETS as DATA_PRESETS
from codaar.evaluate.baselines import BaselineSettings, markdown, run_baselines
from codaar.evaluate.curve import transfer_curve
from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.protocols import AVE_DEFAULTS, AVVP_DEFAULTS, PROTOCOLS
from codaar.evaluate.run import ALL_TASKS, TASKS, evaluate
from codaar.evaluate.segmentation.backbones import BACKBONES
from codaar.evaluate.segmentation.task import AVSSettings
from codaar.runtime.interrupts import Interrupted, interrupted_line, interruptible
from codaar.runtime.outputs import OutputError, check_output, os_error_line
from codaar.runtime.publish import replace_files
from codaar.settings import CommandLineParser, add_settings, nested, parse_settings, setting, settings

BASELINES = "baselines"  # the subcommand; any other first argument is a checkpoint
_HEAD_EPOCHS = "head epochs (official: the authors' n_epoch; head epochs = n_epoch - checkpoint epoch - 1)"


@settings
class EvaluateCommand:
    """Every option of `python -m codaar.evaluate CHECKPOINT`."""

    data: str | None = setting(None, "data folder in the project's format (none: the built-in data set the "
                               "checkpoint was pretrained on, from its config)", metavar="DIR")
    data_preset: str | None = setting(None, "built-in data set preset instead (none: the checkpoint's)",
                                      choices=tuple(DATA_PRESETS))
    data_seed: int | None = setting(None, "seed of the built-in data set (none: the checkpoint's)", at_least=0)
    allow_split_problems: bool = setting(False, "accept a data set whose train/val/test splits share clips or whose "
                                         "splits list a clip twice (refused otherwise)")
    protocol: str = setting("clean", "clean, official (the authors' scripts as coded) or both (see "
                            "codaar/evaluate/protocols.py)", choices=(*PROTOCOLS, "both"))
    tasks: tuple[str, ...] = setting(TASKS, "the protocols to run (avs: AVSBench-S4 segmentation, with --avs-data)",
                                     choices=ALL_TASKS)
    head_input: str = setting("row", "row: full codebook row at the modality's own index (authors); code: own "
                              "codeword (clean only)", choices=("row", "code"))
    ave_lr: float = setting(AVE_DEFAULTS.lr, "learning rate of the AVE head", above=0)
    ave_batch_size: int = setting(AVE_DEFAULTS.batch_size, "batch size of the AVE head", at_least=1)
    ave_epochs: int = setting(AVE_DEFAULTS.epochs, "AVE " + _HEAD_EPOCHS, at_least=1)
    avvp_lr: float = setting(AVVP_DEFAULTS.lr, "learning rate of the AVVP head", above=0)
    avvp_batch_size: int = setting(AVVP_DEFAULTS.batch_size, "batch size of the AVVP head", at_least=1)
    avvp_epochs: int = setting(AVVP_DEFAULTS.epochs, "AVVP " + _HEAD_EPOCHS, at_least=1)
    transfer_data: str | None = setting(None, "cross-dataset: score on this data folder (data set B)", metavar="DIR")
    transfer_preset: str | None = setting(None, "cross-dataset: score on this built-in preset (data set B)",
                                          choices=tuple(DATA_PRESETS))
    transfer_seed: int | None = setting(None, "seed of the built-in data set B (none: 0)", at_least=0)
    class_map: str | None = setting(None, "JSON or CSV: class name in the training data -> class name in data set B",
                                    metavar="FILE")
    avs_data: str | None = setting(None, "AVSBench-S4 folder for --tasks avs (python -m codaar.data synth DIR "
                                   "--preset avs writes the built-in one)", metavar="DIR")
    avs_backbone: str = setting(AVSSettings.backbone, "segmenter backbone (tiny: random init, for the built-in set; "
                                "resnet50, pvt_v2_b5: published weights from --backbone-weights)", choices=BACKBONES)
    backbone_weights: str | None = setting(None, "the backbone's published weights (.pth read with "
                                           "weights_only=True, or .safetensors)", metavar="FILE")
    random_backbone: bool = setting(False, "let resnet50 / pvt_v2_b5 start from random weights (tests only)")
    avs_lr: float = setting(AVSSettings.lr, "learning rate of the segmenter (Adam)", above=0)
    avs_batch_size: int = setting(AVSSettings.batch_size, "frames per segmenter batch", at_least=1)
    avs_epochs: int = setting(AVSSettings.epochs, "segmenter epochs", at_least=1)
    avs_image_size: int | None = setting(None, "frame size the segmenter reads (none: the built-in set's, else 224)",
                                         at_least=16)
    vggish_weights: str | None = setting(None, "VGGish weights for AVSBench log-mel audio (audio_log_mel/)",
                                         metavar="FILE")
    out: str | None = setting(None, "output folder (none: <run folder>/eval)", metavar="DIR")
    plots: bool = setting(True, "write the PNG plots")
    name: str | None = setting(None, "row label in the tables (none: the run folder's name)")
    threads: int | None = setting(None, "torch CPU threads (none: torch's default)", at_least=1)
    curve: bool = setting(False, "score every saved checkpoint of the run (clean protocol, --tasks, every "
                          "cross-modal direction) and plot transfer, codebook usage and index agreement against "
                          "the step; tables give the steps to reach 95% of the final transfer (curve.md)")
    curve_every: int = setting(1, "with --curve: every Nth checkpoint (and the last)", at_least=1)


@settings
class BaselinesCommand:
    """Every option of `python -m codaar.evaluate baselines`."""

    data: str | None = setting(None, "a data set folder instead of the built-in preset", metavar="DIR")
    synthetic: SyntheticSettings = nested(SyntheticSettings, "the built-in data set, without --data")
    out: str | None = setting(None, "write OUT.json and OUT.md (a .json/.md suffix is dropped; none: print only)",
                              metavar="OUT")
    head_lr: float = setting(BaselineSettings().head.lr, "learning rate of the AVE head", above=0)
    head_epochs: int = setting(BaselineSettings().head.epochs, "epochs of the AVE head", at_least=1)
    threads: int = setting(1, "torch CPU threads (1: tiny heads run slower on more threads of a busy machine)",
                           at_least=1)


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m codaar.evaluate", description=__doc__.split("\n\n")[0],
                          epilog=f"A data set's reference baselines, without a checkpoint: python -m "
                                 f"codaar.evaluate {BASELINES} --help (a run folder named {BASELINES}: "
                                 f"./{BASELINES}).")
    p.add_argument("checkpoint", help="a run folder (uses checkpoints/latest) or a checkpoint folder")
    add_settings(p, EvaluateCommand)
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [BASELINES]:
        return baselines(argv[1:])
    command, args = parse_settings(build_parser(), EvaluateCommand, argv)
    if command.threads:
        torch.set_num_threads(command.threads)
    protocols = PROTOCOLS if command.protocol == "both" else (command.protocol,)
    out = Path(command.out) if command.out else None
    if out is None:
        ckpt_path = Path(args.checkpoint)
        out = (ckpt_path if (ckpt_path / "config.json").is_file() else ckpt_path.parent.parent) / "eval"
    try:
        with interruptible():
            result = run_cli(args.checkpoint, command, protocols, out)
    except (EvaluationError, OutputError) as exc:
        _fail("python -m codaar.evaluate", str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail("python -m codaar.evaluate", os_error_line(exc, out))
    except Interrupted as exc:
        print(f"python -m codaar.evaluate: {interrupted_line(exc, out)}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    report = out / ("curve.md" if command.curve else "tables.md")
    print(report.read_text())
    print(f"written: {report}, {report.with_suffix('.json').name}" + (", *.png" if command.plots else ""))
    return result


def run_cli(checkpoint: str, command: EvaluateCommand, protocols: tuple[str, ...], out: Path) -> dict:
    ave = {"lr": command.ave_lr, "batch_size": command.ave_batch_size, "epochs": command.ave_epochs}
    avvp = {"lr": command.avvp_lr, "batch_size": command.avvp_batch_size, "epochs": command.avvp_epochs}
    if command.curve:
        return transfer_curve(checkpoint, every=command.curve_every,
                              tasks=tuple(t for t in command.tasks if t not in ("retrieval", "avs")), ave=ave,
                              avvp=avvp, out=out, plots=command.plots, log=lambda s: print(s, file=sys.stderr),
                              allow_split_problems=command.allow_split_problems)
    return evaluate(
        checkpoint, data=command.data, data_preset=command.data_preset, data_seed=command.data_seed,
        protocols=protocols, tasks=command.tasks, head_input=command.head_input, ave=ave, avvp=avvp,
        transfer_data=command.transfer_data, transfer_preset=command.transfer_preset,
        transfer_seed=command.transfer_seed, class_map=command.class_map, out=out, plots=command.plots,
        name=command.name, log=lambda s: print(s, file=sys.stderr), allow_split_problems=command.allow_split_problems,
        avs_data=command.avs_data,
        avs={"lr": command.avs_lr, "batch_size": command.avs_batch_size, "epochs": command.avs_epochs,
             "backbone": command.avs_backbone, "backbone_weights": command.backbone_weights,
             "random_backbone": command.random_backbone},
        avs_image_size=command.avs_image_size, vggish_weights=command.vggish_weights)


def build_baselines_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog=f"python -m codaar.evaluate {BASELINES}",
                          description="Score the reference baselines of a data set: within-modality ceiling, "
                                      "random projection and linear CCA on the raw features "
                                      "(codaar/evaluate/baselines.py), with the clean AVE protocol; prints a "
                                      "markdown table, and with --out writes OUT.json and OUT.md.")
    add_settings(p, BaselinesCommand)
    return p


def baselines(argv: list[str]) -> dict:
    """`python -m codaar.evaluate baselines ...`: the report of `run_baselines`, printed as a table (and
    written to OUT.json / OUT.md with --out). A user error prints one line and exits with status 2."""
    command, _ = parse_settings(build_baselines_parser(), BaselinesCommand, argv)
    torch.set_num_threads(command.threads)
    stem = files = None
    if command.out is not None:
        out = Path(command.out)
        stem = out.with_suffix("") if out.suffix in (".json", ".md") else out
        files = (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md"))
    try:
        for path in files or ():
            check_output(path, {"--data": command.data})
        data = load_dataset(command.data) if command.data is not None else build_synthetic(command.synthetic.config())
        defaults = BaselineSettings()
        chosen = replace(defaults, head=replace(defaults.head, lr=command.head_lr, epochs=command.head_epochs))
        report = run_baselines(data, chosen, log=lambda line: print(line, file=sys.stderr))
        line = f"python -m codaar.evaluate {BASELINES} " + shlex.join(argv)
        report["command"] = line
        text = markdown(report, line)
        print(text)
        if stem is not None:
            replace_files({files[0]: json.dumps(report, indent=1) + "\n", files[1]: text})
            print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    except (DataFormatError, ValueError, RuntimeError) as exc:
        _fail(f"python -m codaar.evaluate {BASELINES}", str(exc))
    except OSError as exc:
        _fail(f"python -m codaar.evaluate {BASELINES}", os_error_line(exc, command.out))
    return report


def _fail(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def cli() -> None:
    """The `codaar-evaluate` console script: exit status 0 on success (main returns its results)."""
    main()


if __name__ == "__main__":
    main()
