"""Settings of a training run: one dataclass, with the command line and `--config FILE` built from it.

Precedence: defaults < the preset's values < `--config FILE` (JSON or TOML) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


def option(default, help: str, **extra):  # noqa: A002 (argparse's word)
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # what to train
    preset: str = option("official", "official: the authors' code; paper: the equations as printed, the paper's "
                         "shapes (7x7x512 video, 768-d text) and hyper-parameters", choices=("official", "paper"))
    modalities: tuple[str, ...] = option(("video", "audio", "text"), "comma-separated; AV: video,audio")
    data: str | None = option(None, "a data folder in the project's format (python -m codaar.data); "
                              "none: the built-in data set")
    data_preset: str | None = option(None, "built-in data set preset (default|paper|avvp); none: follows --preset")
    data_seed: int = option(0, "seed of the built-in data set")
    pretrain_clips: int | None = option(None, "built-in data: number of pretraining clips (none: the preset's)")
    split: str = option("pretrain", "which split of the data to pretrain on")
    # model
    dim: int = option(256, "D: latent and code dimension per modality")
    num_codes: int = option(800, "K: codes per modality")
    temporal_ffn_dim: int = option(1024, "feed-forward width of the temporal transformer layers")
    text_lstm_dim: int = option(128, "text BiLSTM width per direction")
    dropout: float = option(0.1, "dropout of the temporal transformers")
    cpc: bool = option(True, "CPC loss (cross-modal predictive coding)")
    dta: bool = option(True, "Discrete Temporal Alignment in the codebook EMA")
    csa: bool = option(True, "Cascading Semantic Alignment of same-index codewords")
    dqa: bool = option(True, "DQA / CMCM loss")
    cascade: tuple[str, ...] | None = option(None, "CSA order, e.g. text,audio,video (none: T->A->V, AV: A->V)")
    deterministic: bool = option(False, "bit-reproducible (sorted) DTA accumulation on GPU")
    codebook_init: str = option("official", "official: the authors' tiny uniform codebook (collapses at step 1 "
                                "until the first dead-code reset); kmeans: per-modality k-means++ on the first "
                                "batch's latents; aligned-kmeans: k-means++ on all modalities' frames together, "
                                "code k = the same moment in every modality",
                                choices=("official", "kmeans", "aligned-kmeans"))
    init_iterations: int = option(0, "Lloyd iterations after the k-means++ seeding of a data-dependent init")
    count_floor: float = option(0.0, "guard, not in the authors' code: hold a code whose EMA count is below this "
                                "at its previous codeword instead of dividing by ~eps (0: off, as the authors)")
    # optimisation (authors' recipe, spec §5)
    epochs: int = option(12, "passes over the pretraining split (12 x 38 steps: past the first dead-code reset)")
    max_steps: int | None = option(None, "stop after this many steps (none: all epochs)")
    batch_size: int = option(80, "clips per step, over all processes")
    lr: float = option(4e-4, "Adam learning rate")
    lr_milestones: tuple[int, ...] = option((10, 20, 30), "epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = option(0.5, "learning-rate decay factor")
    clip_norm: float = option(0.5, "gradient-norm clip, applied to each module group separately")
    drop_last: bool = option(False, "drop the last incomplete batch of an epoch (always done under DDP when "
                             "the batch does not split evenly)")
    seed: int = option(43, "seed of the model init, the data order and every step's random draws")
    # precision and device
    device: str = option("auto", "auto (cuda if available), cpu or cuda")
    float64: bool = option(False, "train in float64, the authors' precision")
    bf16: bool = option(False, "bf16 autocast for the encoders/decoders (CUDA only)")
    cuda_graph: bool = option(False, "capture the training step in a CUDA graph after 3 warm-up steps and "
                              "replay it (one process on CUDA; see codaar/graph_step.py)")
    # run folder, logging, checkpoints
    out: str = option("runs/codaar", "run folder: checkpoints, metrics.jsonl, config.json")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")
    checkpoint_every: int = option(100, "steps between checkpoints (one is also written at the end)")
    keep_checkpoints: int = option(2, "how many checkpoints to keep")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.data_preset is None:
            self.data_preset = "paper" if self.preset == "paper" else "default"
        self.modalities = tuple(self.modalities)
        if self.cascade is not None:
            self.cascade = tuple(self.cascade)
        self.lr_milestones = tuple(self.lr_milestones)
        problems = []
        if self.preset not in ("official", "paper"):
            problems.append(f"preset: expected official or paper, got {self.preset!r}")
        if self.batch_size < 1 or self.epochs < 1:
            problems.append(f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}")
        if self.bf16 and self.float64:
            problems.append("bf16 and float64 exclude each other")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _base_type(annotation) -> type:
    """int for `int | None`, tuple for `tuple[str, ...]`, ..."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"tuple": tuple, "str": str, "int": int, "float": float, "bool": bool})  # noqa: S307
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is tuple:
        return tuple
    return annotation


def _tuple_parser(item_type: type):
    def parse(text: str) -> tuple:
        return tuple(item_type(part.strip()) for part in text.split(",") if part.strip())
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m codaar.train",
        description="Pretrain CoDAAR (encoders, cross-modal quantizer, CPC, decoders). With no arguments: "
                    "AVT on the built-in data set, on the CPU in a few minutes.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    for spec in dataclasses.fields(TrainConfig):
        kind = _base_type(spec.type)
        flag = "--" + spec.name.replace("_", "-")
        # SUPPRESS: only the flags actually given reach the config (so --config FILE values survive)
        kwargs = {"help": f"{spec.metadata['help']} (default: {_show(spec.default)})", "default": argparse.SUPPRESS}
        if "choices" in spec.metadata:
            kwargs["choices"] = spec.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind is tuple:
            item = int if spec.name == "lr_milestones" else str
            parser.add_argument(flag, type=_tuple_parser(item), metavar="A,B,...", **kwargs)
        else:
            parser.add_argument(flag, type=kind, **kwargs)
    return parser


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def read_config_file(path: str) -> dict:
    file = Path(path)
    try:
        text = file.read_text()
        values = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--config {path}: cannot read settings ({exc})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"--config {path}: unknown settings {unknown}; see python -m codaar.train --help")
    return values


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    values = read_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    values.update(args)
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
