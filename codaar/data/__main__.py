"""``python -m codaar.data``: write the built-in data set, inspect a folder, import the authors' layout,
extract features from media files. (A data set's reference baselines: ``python -m codaar.evaluate baselines``.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from codaar.runtime.interrupts import Interrupted, interruptible
from codaar.runtime.outputs import check_output, os_error_line

from .errors import DataFormatError
from .extract import cli as extract_cli
from .flags import add_synthetic_flags, parse_shape, synthetic_config_of
from .format import load_dataset, read_manifest
from .synthetic import write_synthetic


def _add_synth(sub):
    p = sub.add_parser("synth", help="write the built-in synthetic data set",
                       description="Generate the built-in tri-modal data set from a seed and write it in the "
                                   "project's format (same seed and options -> identical files).")
    p.add_argument("out", type=Path, help="output folder (must not exist unless --overwrite)")
    add_synthetic_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="print a summary of a data set folder",
                       description="Check a data set folder (manifest, shapes, dtypes, file sizes) and print a summary.")
    p.add_argument("dir", type=Path, help="data set folder")
    p.add_argument("--no-finite-check", action="store_true", help="skip the full NaN/Inf scan of the features")


def _add_import(sub):
    p = sub.add_parser("import-official", help="convert the authors' zip/pickle layout",
                       description="Convert the authors' layout (meta CSV, per-video zips of pickled arrays, prompt "
                                   "CSV, optional AVE/AVVP labels) into the project's format. Pickles are read with "
                                   "an allow-list unpickler (numpy arrays only). OUT appears only if all succeeds.")
    p.add_argument("out", type=Path, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--meta", type=Path, required=True, help="CSV with columns category,video_id,split")
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of <video_id>.zip audio features [T,128]")
    p.add_argument("--video-dir", type=Path, required=True, help="folder of <video_id>.zip video features [T,7,7,512]")
    p.add_argument("--prompts", type=Path, required=True, help="CSV with columns label,prompt")
    p.add_argument("--categories", type=Path, help="class list, one per line (order = class id; default: sorted meta categories)")
    p.add_argument("--audio-shape", type=parse_shape, default=(128,), help="audio features per segment (default 128)")
    p.add_argument("--video-shape", type=parse_shape, default=(7, 7, 512), help="video features per segment (default 7,7,512)")
    p.add_argument("--segments", type=int, default=10, help="segments per clip; shorter clips repeat their last row, longer ones are truncated")
    p.add_argument("--ave-labels", type=Path, help="AVE Annotations.txt (Category&VideoID&Quality&StartTime&EndTime) -> [10, C+1] labels")
    p.add_argument("--avvp-audio", type=Path, help="AVVP audio label CSV (filename, onset, offset, event_labels)")
    p.add_argument("--avvp-visual", type=Path, help="AVVP visual label CSV (same columns)")
    p.add_argument("--avvp-categories", type=Path, help="AVVP_Categories.txt (order = class id); needed with --avvp-*")
    p.add_argument("--text-featurizer", choices=("hashed", "bert"), default="hashed",
                   help="hashed: offline deterministic word-hash embeddings (default); bert: a local bert-base-uncased "
                        "via transformers (never downloaded)")
    p.add_argument("--text-dim", type=int, default=768, help="width of the hashed text embeddings (default 768)")
    p.add_argument("--bert-path", type=Path, help="folder of a saved BERT model (for --text-featurizer bert)")
    p.add_argument("--bert-keep-ids", type=Path, help="JSON list/dict of BERT token ids to keep (the authors' cnt_new.pkl, converted)")
    p.add_argument("--skip-missing", action="store_true", help="leave out clips whose zip files are missing instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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
    print("finite check: " + ("passed" if finite else "skipped"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codaar.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_inspect(sub)
    _add_import(sub)
    extract_cli.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            data = write_synthetic(args.out, synthetic_config_of(args), overwrite=args.overwrite,
                                   progress=not args.quiet)
            print(f"wrote {args.out}\n{data.summary()}")
        elif args.command == "inspect":
            _print_summary(args.dir, finite=not args.no_finite_check)
        elif args.command == "extract":
            try:
                with interruptible():
                    print(extract_cli.run(args))
            except Interrupted as exc:
                print(f"interrupted by {exc.signal_name}: rerun the same command to resume (work folder beside "
                      f"{args.out})", file=sys.stderr)
                return exc.exit_status
        else:
            from .official_import import import_official
            from .text import make_text_featurizer

            check_output(args.out, {"--bert-path": args.bert_path, "--bert-keep-ids": args.bert_keep_ids})
            featurizer = make_text_featurizer(args.text_featurizer, dim=args.text_dim, max_tokens=args.segments,
                                              bert_path=args.bert_path, keep_token_ids_json=args.bert_keep_ids)
            data = import_official(args.meta, args.audio_dir, args.video_dir, args.prompts, args.out,
                                   audio_shape=args.audio_shape, video_shape=args.video_shape, segments=args.segments,
                                   categories_file=args.categories, text_featurizer=featurizer,
                                   ave_annotations=args.ave_labels, avvp_audio_csv=args.avvp_audio,
                                   avvp_visual_csv=args.avvp_visual, avvp_categories=args.avvp_categories,
                                   skip_missing=args.skip_missing, overwrite=args.overwrite, progress=not args.quiet)
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
