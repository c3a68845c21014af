"""`python -m codaar.train`: pretrain CoDAAR, from a laptop CPU to `torchrun` on a multi-GPU node.

A user error (a bad setting, a run folder that already holds a run or is being written by another
run, unreadable data or checkpoints, an --out that is, contains or lies inside --data or --config,
or cannot be written) prints one line and exits with status 2, before anything is written; so does a
batch that cannot be read, a full disk or another failed file operation met while training (the
checkpoints written so far are kept). A run that goes non-finite stops without saving that state and
exits with status 3.

SIGTERM (how clusters preempt a job) or SIGINT (Ctrl-C) stops the run at the end of the step it
arrives in, after a checkpoint of that step: one line names the step, the checkpoint and the command
that resumes it, and the status is 143 or 130 (128 + the signal). A second signal stops it at once
(the last complete checkpoint is kept, as after kill -9). One that arrives before training starts
stops the program with the same status, before any step.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import torch

from codaar.data import DataFormatError
from codaar.data.batches import BatchError
from codaar.run_folder.checkpoint import CheckpointError
from codaar.runtime import distributed
from codaar.runtime.interrupts import Interrupted, interruptible
from codaar.runtime.locks import FolderBusyError
from codaar.runtime.outputs import OutputError, check_output, os_error_line
from codaar.settings import SettingsError
from codaar.train.config import config_file_of, parse_config
from codaar.train.loop import DivergenceError, Trainer, TrainingError, TrainingInterrupted

USER_ERRORS = (SettingsError, TrainingError, DataFormatError, BatchError, CheckpointError, FolderBusyError,
               OutputError)
EXIT_USAGE, EXIT_DIVERGED = 2, 3


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_config(argv)
    try:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingsError("device", "a device of this machine (it has no CUDA device)", cfg.device)
        check_output(cfg.out, {"--data": cfg.data, "--config": config_file_of(argv)})
        with interruptible():  # until training starts; the trainer then stops at a step's end
            group = distributed.init_from_env(cfg.device, cfg.dist_timeout)
            trainer = Trainer(cfg, group)
        return trainer.run()
    except TrainingInterrupted as exc:
        _fail(f"{exc}: wrote checkpoint {exc.checkpoint} of that step; resume with: "
              f"{resume_command(argv, cfg.resume)}", exc.exit_status)
    except Interrupted as exc:
        _fail(f"interrupted by {exc.signal_name} before training started: no step was trained", exc.exit_status)
    except USER_ERRORS as exc:
        _fail(exc, EXIT_USAGE)
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail(os_error_line(exc, cfg.out), EXIT_USAGE)
    except DivergenceError as exc:
        _fail(exc, EXIT_DIVERGED)
    finally:
        distributed.shutdown()


def resume_command(argv: Sequence[str] | None, resume: str) -> str:
    """The command line that continues this run: the same one, with --resume unless it has it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if resume == "no":
        args.append("--resume")
    return "python -m codaar.train " + shlex.join(args)


def _fail(exc: Exception | str, status: int) -> None:
    print(f"python -m codaar.train: error: {exc}", file=sys.stderr)
    raise SystemExit(status) from None


def cli() -> None:
    """The `codaar-train` console script: exit status 0 on success (main returns its results)."""
    main()


if __name__ == "__main__":
    main()
