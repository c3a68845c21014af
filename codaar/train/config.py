"""Settings of a training run: `TrainConfig` (holding the `ModelConfig`, which holds the
`QuantizerConfig`), the command line and `--config FILE` built from their declarations, and the rules
that decide what a resumed run may change.

Precedence: defaults < the preset's values < `--config FILE` (JSON or TOML, flat or nested names)
< command-line flags. Every value is checked where it is declared (codaar.settings) before anything
runs or is written.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence

from codaar.data.synthetic import PRESETS as DATA_PRESETS
from codaar.model.config import ModelConfig, saved_model_config
from codaar.run_folder.checkpoint import CheckpointError
from codaar.settings import (
    CHANGES,
    FREE,
    MATCH,
    CommandLineParser,
    SettingsError,
    add_settings,
    declared,
    iter_settings,
    nested,
    parse_settings,
    progress_setting,
    setting,
    settings,
    settings_from_args,
)

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
SEED_MAX = 2**63 - 1  # torch's generators take 64-bit seeds; derived seeds mix in 63 bits


@settings
class TrainConfig:
    # The trainer's default recipe is `recommended` (the library's default preset stays `official`).
    model: ModelConfig = nested(ModelConfig, "the network and its quantizer", preset="recommended")
    # data
    data: str | None = setting(None, "a data folder in the project's format (python -m codaar.data); none: the "
                               "built-in data set")
    data_preset: str | None = setting(None, "built-in data set preset (none: paper under --preset paper, else "
                                      "default)", choices=tuple(DATA_PRESETS))
    data_seed: int = setting(0, "seed of the built-in data set", at_least=0, at_most=SEED_MAX)
    pretrain_clips: int | None = setting(None, "built-in data: number of pretraining clips (none: the preset's)",
                                         at_least=1)
    split: str = setting("pretrain", "which split of the data to pretrain on")
    allow_split_problems: bool = setting(False, "accept a data set whose train/val/test splits share clips or "
                                         "whose splits list a clip twice (refused otherwise)", resume=FREE)
    data_workers: int | None = setting(None, "threads that gather the next batches while a step runs, each batch "
                                       "with one copy into a reused (pinned) buffer (0: in the main process when "
                                       "the step asks for it; none: one per CPU beyond the first, at most 4)",
                                       at_least=0, resume=FREE)
    # optimisation (authors' recipe, docs/method.md §6)
    epochs: int = setting(12, "passes over the pretraining split (12 x 38 steps: past the first dead-code reset)",
                          at_least=1, resume=CHANGES)
    max_steps: int | None = setting(None, "stop after this many steps (none: all epochs)", at_least=1, resume=CHANGES)
    batch_size: int = setting(80, "clips per step, over all processes", at_least=1)
    lr: float = setting(4e-4, "Adam learning rate", above=0, resume=CHANGES)
    lr_milestones: tuple[int, ...] = setting((10, 20, 30), "epochs at which the learning rate is multiplied by "
                                             "lr_gamma", at_least=0, resume=CHANGES)
    lr_gamma: float = setting(0.5, "learning-rate decay factor at each milestone", above=0, resume=CHANGES)
    clip_norm: float = setting(0.5, "gradient-norm clip, applied to each module group separately", above=0)
    drop_last: bool = setting(False, "drop the last incomplete batch of an epoch (always done under DDP when the "
                              "batch does not split evenly)")
    seed: int = setting(43, "seed of the model init, the data order and every step's random draws", at_least=0,
                        at_most=SEED_MAX)
    # precision and device
    device: str = setting("auto", "auto (cuda if available), cpu, cuda or cuda:N", resume=FREE,
                          metavar="{auto,cpu,cuda,cuda:N}")
    dist_timeout: float = setting(1800.0, "seconds processes under torchrun wait for each other (joining the "
                                  "group, every collective) before failing: a peer stuck after a restart then "
                                  "ends in an error that torchrun --max-restarts restarts", above=0, resume=FREE)
    float64: bool = setting(False, "train in float64, the authors' precision")
    bf16: bool = setting(False, "bf16 autocast for the encoders/decoders (CUDA only)")
    compile: bool = setting(False, "torch.compile the encoders, CPC and decoders (the quantizer stays eager); the "
                            "first step compiles them (a minute or more), later steps reuse the graphs",
                            resume=CHANGES)
    cuda_graph: bool = setting(False, "capture the training step in a CUDA graph after 3 warm-up steps and replay "
                               "it (one process on CUDA; see codaar/train/graph_step.py)", resume=CHANGES)
    # run folder, logging, checkpoints
    out: str = setting("runs/codaar", "run folder: checkpoints, metrics.jsonl, config.json", resume=FREE)
    resume: str = setting("no", "yes (or --resume alone): continue the run in --out from its newest checkpoint "
                          "that verifies; auto: that, or a new run when --out holds no checkpoint yet (for "
                          "torchrun --max-restarts); no: a new run", choices=("no", "yes", "auto"), const="yes",
                          resume=FREE)
    on_nonfinite: str = setting("stop", "a non-finite loss, gradient or codebook: stop (exit 3, the last "
                                "checkpoint kept) or skip the batch's optimizer step (counted in the metrics; "
                                "costs one host sync per step)", choices=("stop", "skip"), resume=FREE)
    log_every: int = setting(50, "steps between log points: the logged values stay on the device and are read "
                             "once per log point, as their mean over its steps (one copy); every read makes the "
                             "host wait for the device, so on a GPU that queues steps ahead 50 costs at most ~2% "
                             "of its time (a log point is also made at each checkpoint and at the last step)",
                             at_least=1, resume=FREE)
    checkpoint_every: int = setting(100, "steps between checkpoints (one is also written at the end)", at_least=1,
                                    resume=FREE)
    keep_checkpoints: int = setting(2, "how many checkpoints to keep", at_least=1, resume=FREE)
    tensorboard: bool = setting(False, "also log to TensorBoard (needs the tensorboard package)", resume=FREE)
    progress: bool = progress_setting()

    def __post_init__(self) -> None:
        self.validate_fields()
        if self.data == "":
            raise SettingsError("data", "a data folder", "''")
        if self.data is not None:  # recorded absolute: later commands may run in another directory
            object.__setattr__(self, "data", os.path.abspath(self.data))
        if self.data_preset is None:
            object.__setattr__(self, "data_preset", "paper" if self.model.preset == "paper" else "default")
        if not _DEVICE.match(self.device):
            raise SettingsError("device", "auto, cpu, cuda or cuda:N", self.device)
        if self.bf16 and self.float64:
            raise SettingsError("bf16", "false when float64 is set (they exclude each other)", self.bf16)
        if not self.split:
            raise SettingsError("split", "a split name", self.split)
        if self.compile and self.cuda_graph:
            raise SettingsError("compile", "false with --cuda-graph (use one of them: the pair is not supported)",
                                self.compile)
        if self.on_nonfinite == "skip" and self.cuda_graph:
            raise SettingsError("on_nonfinite", "stop with --cuda-graph (skipping decides on the host)", "skip")


# -------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m codaar.train",
        description="Pretrain CoDAAR (encoders, cross-modal quantizer, CPC, decoders). With no arguments: "
                    "AVT on the built-in data set, on the CPU in a few minutes.",
    )
    add_settings(parser, TrainConfig)
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The run's settings from the command line (and its --config file). Raises ConfigFileError or
    SettingsError naming the setting, the expected value and the value found."""
    return settings_from_args(TrainConfig, build_parser().parse_args(argv))


def config_file_of(argv: Sequence[str] | None = None) -> str | None:
    """The `--config FILE` of a command line that `parse_config` accepted."""
    return build_parser().parse_known_args(argv)[0].config


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """`config_from_args` for a command-line program: a bad setting prints one line and exits 2."""
    return parse_settings(build_parser(), TrainConfig, argv)[0]


# ---------------------------------------------------------------------------- saved configs
def saved_configs(meta: Mapping[str, object], where: str) -> tuple[TrainConfig, ModelConfig]:
    """The run's settings and the resolved model (input sizes from the data) of a checkpoint's meta.json.

    Checkpoints before nested settings (format version 1) stored flat dictionaries and the
    quantizer's extra settings under 'quantizer_overrides'; their names are today's flat names."""
    train = meta.get("config")
    if not isinstance(train, Mapping):
        raise CheckpointError(f"{where}: field 'config': expected the run's settings (a JSON object), found "
                              f"{type(train).__name__}")
    model_config = saved_model_config(meta, where)
    model = meta["model_config"]
    if "quantizer_overrides" in model:  # version 1: the model's own settings were not in the run's
        model = {**model, **(model["quantizer_overrides"] or {})}
        settable = {name for name, decl in declared(ModelConfig).items() if decl.meta["flag"]}
        train = {**{k: v for k, v in model.items() if k in settable}, **train}
        if isinstance(train.get("resume"), bool):  # was a switch
            train["resume"] = "yes" if train["resume"] else "no"
    try:
        return TrainConfig.from_dict(train), model_config
    except SettingsError as exc:
        raise CheckpointError(f"{where}: {exc} (a checkpoint of another codaar version?)") from None


def resume_differences(saved: TrainConfig, now: TrainConfig, saved_model: ModelConfig, now_model: ModelConfig,
                       ) -> tuple[list[str], list[tuple[str, object, object]]]:
    """What resuming `saved` with `now`'s settings would change: (refusals, accepted changes).

    Every setting has a resume rule (codaar.settings): MATCH settings must be equal, FREE ones may
    differ silently, CHANGES ones may differ and are returned, to be announced and recorded. The
    settings the trainer derives (input sizes from the data, the reset seed from --seed) must match
    in the resolved models: a different data set is another run."""
    old, old_model = saved.flat(), saved_model.flat()
    refused, changed = [], []
    for decl, value in iter_settings(now):
        if not decl.meta["flag"]:
            continue  # derived: compared in the resolved model below
        if old[decl.name] == value or decl.meta["resume"] == FREE:
            continue
        if decl.meta["resume"] == MATCH:
            refused.append(f"setting '{decl.name}' ({decl.flag}) was {_show(old[decl.name])} in the run, now "
                           f"{_show(value)}; it must match (start a new run with another --out to change it)")
        else:
            changed.append((decl.name, old[decl.name], value))
    for decl, value in iter_settings(now_model):
        if not decl.meta["flag"] and old_model[decl.name] != value:
            refused.append(f"'{decl.name}' (from the data or --seed) was {_show(old_model[decl.name])} in the run, "
                           f"now {_show(value)}")
    return refused, changed


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
