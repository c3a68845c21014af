"""`python -m codaar.train`: pretrain CoDAAR, from a laptop CPU to `torchrun` on a multi-GPU node.

A user error (a bad setting, a run folder that already holds a run or is being written by another
run, unreadable data or checkpoints, an --out that is, contains or lies inside --data or --config,
or cannot be written) prints one line and exits with status 2, before anything is written; so does a
batch that cannot be read, a full disk or another failed file operation met while training (the
checkpoints written so far are kept). A run that goes non-finite stops without saving that state and
exits with status 3.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from codaar.data import DataFormatError
from codaar.data.batches import BatchError
from codaar.run_folder.checkpoint import CheckpointError
from codaar.runtime import distributed
from codaar.runtime.locks import FolderBusyError
from codaar.runtime.outputs import OutputError, check_output, os_error_line
from codaar.settings import SettingsError
from codaar.train.config import config_file_of, parse_config
from codaar.train.loop import DivergenceError, Trainer, TrainingError

USER_ERRORS = (SettingsError, TrainingError, DataFormatError, BatchError, CheckpointError, FolderBusyError,
               OutputError)
EXIT_USAGE, EXIT_DIVERGED = 2, 3


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_config(argv)
    try:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingsError("device", "a device of this machine (it has no CUDA device)", cfg.device)
        check_output(cfg.out, {"--data": cfg.data, "--config": config_file_of(argv)})
        group = distributed.init_from_env(cfg.device, cfg.dist_timeout)
        return Trainer(cfg, group).run()
    except USER_ERRORS as exc:
        _fail(exc, EXIT_USAGE)
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail(os_error_line(exc, cfg.out), EXIT_USAGE)
    except DivergenceError as exc:
        _fail(exc, EXIT_DIVERGED)
    finally:
        distributed.shutdown()


def _fail(exc: Exception | str, status: int) -> None:
    print(f"python -m codaar.train: error: {exc}", file=sys.stderr)
    raise SystemExit(status) from None


def cli() -> None:
    """The `codaar-train` console script: exit status 0 on success (main returns its results)."""
    main()


if __name__ == "__main__":
    main()
