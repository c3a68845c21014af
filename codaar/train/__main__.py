"""`python -m codaar.train`: pretrain CoDAAR, from a laptop CPU to `torchrun` on a multi-GPU node.

A user error (a bad setting, a run folder that already holds a run, unreadable data or
checkpoints) prints one line and exits with status 2, before anything is written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from codaar.data import DataFormatError
from codaar.runtime import distributed
from codaar.settings import SettingsError
from codaar.train.checkpoint import CheckpointError
from codaar.train.config import parse_config
from codaar.train.loop import Trainer, TrainingError

USER_ERRORS = (SettingsError, TrainingError, DataFormatError, CheckpointError)


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_config(argv)
    group = distributed.init_from_env(cfg.device)
    try:
        return Trainer(cfg, group).run()
    except USER_ERRORS as exc:
        print(f"python -m codaar.train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
