"""`python -m codaar.encode RUN --out CODES`: export the discrete codes of a trained model.

Per clip, per second, per modality, the code index ([N, T] int64 per modality), optionally the
quantized vectors and the full codebook rows, as `.npy` files with a manifest (the checkpoint and
the SHA-256 of its tensors, K, D, the modalities, the clips). The data set defaults to the one the
run was trained on. A user error (no checkpoint, data without a modality, feature sizes that do not
fit, an output that would overwrite an input or cannot be written, a full disk) prints one line and
exits with status 2. Interrupted (SIGINT, SIGTERM), it leaves no partial output, says so in one line
and exits with 130 or 143.
"""

from __future__ import annotations

import argparse
import sys

from codaar.encode.export import EncodeError, EncodeSettings, encode_dataset
from codaar.pretrained import provenance_note
from codaar.runtime.interrupts import Interrupted, interrupted_line, interruptible
from codaar.runtime.outputs import OutputError, os_error_line
from codaar.settings import (
    CommandLineParser,
    add_settings,
    deprecated_flag,
    nested,
    parse_settings,
    progress_setting,
    setting,
    settings,
)


@settings
class EncodeCommand:
    """Every option of `python -m codaar.encode`: what is encoded (`EncodeSettings`, recorded in the
    manifest) and where it goes."""

    encode: EncodeSettings = nested(EncodeSettings, "what is encoded, and how")
    out: str = setting(None, "output folder (must not exist unless --overwrite)", metavar="DIR")
    overwrite: bool = setting(False, "replace --out if it exists")
    progress: bool = progress_setting()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="python -m codaar.encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", metavar="RUN", help="a run folder (its newest checkpoint) or a checkpoint folder")
    add_settings(parser, EncodeCommand)
    deprecated_flag(parser, "--quiet", "progress", False, "--no-progress")
    return parser


def main(argv: list[str] | None = None) -> dict:
    command, args = parse_settings(build_parser(), EncodeCommand, argv)
    try:
        with interruptible():
            manifest = encode_dataset(args.checkpoint, command.out, command.encode, overwrite=command.overwrite,
                                      progress=command.progress)
    except (EncodeError, FileExistsError, OutputError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail(os_error_line(exc, command.out))
    except Interrupted as exc:
        print(f"python -m codaar.encode: {interrupted_line(exc, command.out)}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    written = ", ".join(manifest["written"])
    print(f"wrote {command.out}: {manifest['clips']} clips x {manifest['segments']} steps, "
          f"{'/'.join(manifest['modalities'])} ({written}), K={manifest['num_codes']}, "
          f"checkpoint {manifest['checkpoint']['folder']} (step {manifest['checkpoint']['step']})")
    if note := provenance_note(manifest["pretraining_data"]):
        print(note)
    return manifest


def _fail(message: str) -> None:
    print(f"python -m codaar.encode: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
