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
from pathlib import Path

from codaar.encode.export import EncodeError, EncodeSettings, encode_dataset
from codaar.runtime.interrupts import Interrupted, interrupted_line, interruptible
from codaar.runtime.outputs import OutputError, os_error_line
from codaar.settings import SettingsError, add_flags, declared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m codaar.encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", metavar="RUN", help="a run folder (its newest checkpoint) or a checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_flags(parser, EncodeSettings)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    given = {name: value for name, value in vars(args).items() if name in declared(EncodeSettings)}
    try:
        settings = EncodeSettings(**given)
        with interruptible():
            manifest = encode_dataset(args.checkpoint, args.out, settings, overwrite=args.overwrite,
                                      progress=not args.quiet)
    except (EncodeError, SettingsError, OutputError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        _fail(os_error_line(exc, args.out))
    except Interrupted as exc:
        print(f"python -m codaar.encode: {interrupted_line(exc, args.out)}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    written = ", ".join(manifest["written"])
    print(f"wrote {args.out}: {manifest['clips']} clips x {manifest['segments']} steps, "
          f"{'/'.join(manifest['modalities'])} ({written}), K={manifest['num_codes']}, "
          f"checkpoint {manifest['checkpoint']['folder']} (step {manifest['checkpoint']['step']})")
    return manifest


def _fail(message: str) -> None:
    print(f"python -m codaar.encode: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
