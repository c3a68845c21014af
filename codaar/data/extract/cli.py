"""The ``extract`` subcommand of ``python -m codaar.data``: its options and how they map to a run."""

from __future__ import annotations

from pathlib import Path

from codaar.settings import add_settings, deprecated_flag, nested, progress_setting, setting, settings

from .settings import ExtractSettings


@settings
class ExtractCommand:
    """Every option of ``python -m codaar.data extract``: what is extracted (`ExtractSettings`, which a
    resumed run must keep) and how this run goes."""

    extract: ExtractSettings = nested(ExtractSettings, "what is extracted, and how")
    restart: bool = setting(False, "discard an unfinished run of other inputs/settings")
    overwrite: bool = setting(False, "replace OUT if it exists")
    progress: bool = progress_setting()


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
    add_settings(p, ExtractCommand)
    deprecated_flag(p, "--quiet", "progress", False, "--no-progress")


def run(args, command: ExtractCommand) -> str:
    """Run the extraction of the parsed ``args`` (OUT, INPUTS) with ``command``'s settings; returns the
    line(s) to print."""
    from .run import extract  # torch and PyAV load here, after the settings were checked

    settings = command.extract
    data = extract([str(p) for p in args.inputs], args.out, settings, overwrite=command.overwrite,
                   restart=command.restart, progress=command.progress)
    lines = [f"wrote {args.out}"]
    lines.append(data.summary())
    import json

    report = json.loads((args.out / "extract_report.json").read_text())
    lines.append(f"files: {report['extracted']} extracted, {len(report['skipped'])} skipped "
                 f"(reasons in {args.out / 'extract_report.json'})")
    if "this_run" in report:
        this_run = report["this_run"]
        lines.append(f"time: {this_run['seconds']:.1f} s, {this_run['seconds_per_file']:.3f} s per file")
    if settings.random_weights:
        lines.append("warning: random weights (tests and smoke runs only); the manifest says so")
    return "\n".join(lines)
