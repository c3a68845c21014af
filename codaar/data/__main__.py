"""``python -m codaar.data``: write the built-in data set, inspect a folder, import the authors' layout,
extract features from media files. (A data set's reference baselines: ``python -m codaar.evaluate baselines``.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from codaar.runtime.interrupts import Interrupted, interruptible
from codaar.runtime.outputs import check_output, os_error_line
from codaar.settings import (
    CommandLineParser,
    SettingsError,
    add_settings,
    deprecated_flag,
    nested,
    progress_setting,
    setting,
    settings,
    settings_from_args,
)

from .errors import DataFormatError
from .extract import cli as extract_cli
from .extract.settings import TEXT_FEATURIZERS
from .flags import AVS_PRESET, SyntheticSettings
from .format import load_dataset, read_manifest
from .splits import ALLOW_FLAG, HELD_APART, split_problems
from .synthetic import write_synthetic


@settings
class SynthCommand:
    """Every option of `python -m codaar.data synth OUT`."""

    synthetic: SyntheticSettings = nested(SyntheticSettings, "the built-in data set")
    overwrite: bool = setting(False, "replace OUT if it exists")
    progress: bool = progress_setting()


@settings
class InspectCommand:
    """Every option of `python -m codaar.data inspect DIR`."""

    finite_check: bool = setting(True, "scan every feature for NaN/Inf (--no-finite-check: skip the full scan)")


@settings
class ImportCommand:
    """Every option of `python -m codaar.data import-official OUT`."""

    meta: str = setting(None, "CSV with columns category,video_id,split", metavar="CSV")
    audio_dir: str = setting(None, "folder of <video_id>.zip audio features [T,128]", metavar="DIR")
    video_dir: str = setting(None, "folder of <video_id>.zip video features [T,7,7,512]", metavar="DIR")
    prompts: str = setting(None, "CSV with columns label,prompt", metavar="CSV")
    categories: str | None = setting(None, "class list, one per line (order = class id; none: the sorted meta "
                                     "categories)", metavar="FILE")
    audio_shape: tuple[int, ...] = setting((128,), "audio features per segment", at_least=1, metavar="D")
    video_shape: tuple[int, ...] = setting((7, 7, 512), "video features per segment: D or H,W,C", at_least=1,
                                           metavar="D|H,W,C")
    segments: int = setting(10, "segments per clip; shorter clips repeat their last row, longer ones are truncated",
                            at_least=1)
    ave_labels: str | None = setting(None, "AVE Annotations.txt (Category&VideoID&Quality&StartTime&EndTime) -> "
                                     "[10, C+1] labels", metavar="FILE")
    avvp_audio: str | None = setting(None, "AVVP audio label CSV (filename, onset, offset, event_labels)",
                                     metavar="CSV")
    avvp_visual: str | None = setting(None, "AVVP visual label CSV (same columns)", metavar="CSV")
    avvp_categories: str | None = setting(None, "AVVP_Categories.txt (order = class id); needed with --avvp-*",
                                          metavar="FILE")
    text_featurizer: str = setting("hashed", "hashed: offline deterministic word-hash embeddings; bert: a local "
                                   "bert-base-uncased via transformers (never downloaded)", choices=TEXT_FEATURIZERS)
    text_dim: int = setting(768, "width of the hashed text embeddings", at_least=1)
    bert_path: str | None = setting(None, "folder of a saved BERT model (for --text-featurizer bert)", metavar="DIR")
    bert_keep_ids: str | None = setting(None, "JSON list/dict of BERT token ids to keep (the authors' cnt_new.pkl, "
                                        "converted)", metavar="FILE")
    skip_missing: bool = setting(False, "leave out clips whose zip files are missing instead of failing")
    overwrite: bool = setting(False, "replace OUT if it exists")
    progress: bool = progress_setting()

    def __post_init__(self) -> None:
        self.validate_fields()
        for name in ("audio_shape", "video_shape"):
            if not getattr(self, name):
                raise SettingsError(name, "a shape such as 128 or 7,7,512", "")


def _add_synth(sub):
    p = sub.add_parser("synth", help="write the built-in synthetic data set",
                       description="Generate the built-in tri-modal data set from a seed and write it in the "
                                   "project's format (same seed and options -> identical files).")
    p.add_argument("out", type=Path, help="output folder (must not exist unless --overwrite)")
    add_settings(p, SynthCommand)
    deprecated_flag(p, "--quiet", "progress", False, "--no-progress")


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="print a summary of a data set folder",
                       description="Check a data set folder (manifest, shapes, dtypes, file sizes) and print a "
                                   "summary.")
    p.add_argument("dir", type=Path, help="data set folder")
    add_settings(p, InspectCommand)


def _add_import(sub):
    p = sub.add_parser("import-official", help="convert the authors' zip/pickle layout",
                       description="Convert the authors' layout (meta CSV, per-video zips of pickled arrays, prompt "
                                   "CSV, optional AVE/AVVP labels) into the project's format. Pickles are read with "
                                   "an allow-list unpickler (numpy arrays only). OUT appears only if all succeeds.")
    p.add_argument("out", type=Path, help="output folder (must not exist unless --overwrite)")
    add_settings(p, ImportCommand)
    deprecated_flag(p, "--quiet", "progress", False, "--no-progress")


COMMANDS = {"synth": SynthCommand, "inspect": InspectCommand, "import-official": ImportCommand,
            "extract": extract_cli.ExtractCommand}


def _print_summary(root: Path, finite: bool) -> None:
    data = load_dataset(root, check_finite=finite)
    manifest = read_manifest(root)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"{root}: {manifest['format']} schema {manifest['schema_version']}, {size / 2**20:.1f} MiB")
    print(f"source: {data.info.get('source', '?')}" + (f" (preset {data.info['preset']}, seed {data.info['seed']})"
                                                         if "preset" in data.info else ""))
    if "warning" in data.info:
        print(f"warning: {data.info['warning']}")
    print(data.summary())
    print("classes: " + ", ".join(data.class_names[:12]) + (" ..." if data.num_classes > 12 else ""))
    print(f"text: {data.text_kind or 'none'}")
    if data.prompts:
        print(f"prompt[0]: {data.prompts[0]!r}")
    if data.clip_captions:
        print(f"caption[0]: {data.clip_captions[0]!r}")
    sample = np.sort(np.random.default_rng(0).choice(data.num_clips, size=min(256, data.num_clips), replace=False))
    for modality in ("audio", "video"):
        x = np.asarray(data.modality(modality)[sample], dtype=np.float64)
        print(f"{modality} (sample of {len(sample)} clips): mean {x.mean():.4f}, std {x.std():.4f}, "
              f"min {x.min():.4f}, max {x.max():.4f}")
    for name, labels in data.labels.items():
        background = float(np.asarray(labels[..., -1]).mean())
        print(f"labels[{name}]: background on {background:.1%} of segments")
    if "segment_fix" in data.info:
        print(f"segment fix-up: {data.info['segment_fix']}")
    problems = split_problems(data.splits)
    for problem in problems:
        print(f"split problem: {problem} (train and evaluate refuse this without {ALLOW_FLAG})")
    if not problems:
        held = [name for name in HELD_APART if name in data.splits]
        print("splits: no clip listed twice" + (f", {'/'.join(held)} disjoint" if len(held) > 1 else ""))
    print("finite check: " + ("passed" if finite else "skipped"))


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(prog="python -m codaar.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_inspect(sub)
    _add_import(sub)
    extract_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = settings_from_args(COMMANDS[args.command], args)  # a bad setting stops here (a ValueError)
        if args.command == "synth" and command.synthetic.preset == AVS_PRESET:
            from .avs_synthetic import write_avs_synthetic

            avs = write_avs_synthetic(args.out, command.synthetic.avs_config(), overwrite=command.overwrite,
                                      progress=command.progress)
            print(f"wrote {args.out}\n{avs.summary()}")
        elif args.command == "synth":
            data = write_synthetic(args.out, command.synthetic.config(), overwrite=command.overwrite,
                                   progress=command.progress)
            print(f"wrote {args.out}\n{data.summary()}")
        elif args.command == "inspect":
            _print_summary(args.dir, finite=command.finite_check)
        elif args.command == "extract":
            try:
                with interruptible():
                    print(extract_cli.run(args, command))
            except Interrupted as exc:
                print(f"interrupted by {exc.signal_name}: rerun the same command to resume (work folder beside "
                      f"{args.out})", file=sys.stderr)
                return exc.exit_status
        else:
            from .official_import import import_official
            from .text import make_text_featurizer

            check_output(args.out, {"--bert-path": command.bert_path, "--bert-keep-ids": command.bert_keep_ids})
            featurizer = make_text_featurizer(command.text_featurizer, dim=command.text_dim,
                                              max_tokens=command.segments, bert_path=command.bert_path,
                                              keep_token_ids_json=command.bert_keep_ids)
            data = import_official(command.meta, command.audio_dir, command.video_dir, command.prompts, args.out,
                                   audio_shape=command.audio_shape, video_shape=command.video_shape,
                                   segments=command.segments, categories_file=command.categories,
                                   text_featurizer=featurizer, ave_annotations=command.ave_labels,
                                   avvp_audio_csv=command.avvp_audio, avvp_visual_csv=command.avvp_visual,
                                   avvp_categories=command.avvp_categories, skip_missing=command.skip_missing,
                                   overwrite=command.overwrite, progress=command.progress)
            print(f"wrote {args.out}\n{data.summary()}")
    except (DataFormatError, ValueError, RuntimeError) as exc:
        print(f"python -m codaar.data: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished folder, too many open files
        print(f"python -m codaar.data: error: {os_error_line(exc, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
