"""The ``extract`` subcommand of ``python -m codaar.data``: its options and how they map to a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from codaar.settings import add_flags, declared

from .settings import ExtractSettings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract", help="extract features from video/audio files into a data set",
        description="Decode media files (PyAV), cut them into one-second segments and extract the paper's "
                    "features: audio VGGish 128-d, video VGG-19 pool5 7x7x512, text from per-clip captions or "
                    "class prompts. Streams into memory-mapped files, resumes a killed run (rerun the same command), "
                    "skips unusable files and reports them (extract_report.json), and makes OUT appear only when done.")
    p.add_argument("out", type=Path, help="output folder (must not exist unless --overwrite)")
    p.add_argument("inputs", nargs="+", type=Path,
                   help="media files, folders (searched recursively for mp4/mkv/webm/avi/mov/... and wav/mp3/m4a/"
                        "flac/...) or .txt lists of paths; a clip id is the file name without its extension")
    add_flags(p, ExtractSettings)
    g = p.add_argument_group("operation")
    g.add_argument("--restart", action="store_true", help="discard an unfinished run of other inputs/settings")
    g.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_of(args: argparse.Namespace) -> ExtractSettings:
    """The run's settings from the parsed flags (only those given; SettingsError on a bad value)."""
    return ExtractSettings(**{name: value for name, value in vars(args).items() if name in declared(ExtractSettings)})


def run(args) -> str:
    """Run the extraction the parsed ``args`` describe; returns the line(s) to print."""
    settings = settings_of(args)  # a bad value stops here, before torch and PyAV load

    from .run import extract

    data = extract([str(p) for p in args.inputs], args.out, settings, overwrite=args.overwrite, restart=args.restart,
                   progress=not args.quiet)
    lines = [f"wrote {args.out}"]
    lines.append(data.summary())
    import json

    report = json.loads((args.out / "extract_report.json").read_text())
    lines.append(f"files: {report['extracted']} extracted, {len(report['skipped'])} skipped "
                 f"(reasons in {args.out / 'extract_report.json'})")
    if "this_run" in report:
        lines.append(f"time: {report['this_run']['seconds']:.1f} s, {report['this_run']['seconds_per_file']:.3f} s per file")
    if settings.random_weights:
        lines.append("warning: random weights (tests and smoke runs only); the manifest says so")
    return "\n".join(lines)
