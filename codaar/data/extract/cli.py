"""The ``extract`` subcommand of ``python -m codaar.data``: its options and how they map to a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .annotations import parse_fractions


def _fractions(text: str):
    try:
        return parse_fractions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    g = p.add_argument_group("segments")
    g.add_argument("--segments", type=int, default=10, help="one-second segments per clip, T (default 10)")
    g.add_argument("--window", choices=("first", "centre", "every"), default="first",
                   help="for clips longer than T: first (default: seconds 0..T), centre, or every full window as its "
                        "own clip (id CLIP@<start>s); clips shorter than T repeat their last second")
    g = p.add_argument_group("models and weights")
    g.add_argument("--vggish-weights", type=Path, help="VGGish weights (.pth state_dict in the torchvggish layout, or "
                   ".safetensors); default: the published vggish-10086976.pth through torch hub's cache")
    g.add_argument("--vggish-pca-params", type=Path, help="VGGish PCA parameters for --vggish-postprocess (default: "
                   "the published vggish_pca_params-970ea276.pth through torch hub's cache)")
    g.add_argument("--vgg19-weights", type=Path, help="VGG-19 weights (torchvision's state_dict layout, .pth or "
                   ".safetensors); default: torchvision's published IMAGENET1K_V1 file through torch hub's cache")
    g.add_argument("--random-weights", action="store_true",
                   help="seeded random weights instead (tests and smoke runs only; stamped into the manifest)")
    g.add_argument("--seed", type=int, default=0, help="seed of --random-weights and of the split shuffle (default 0)")
    g.add_argument("--vggish-postprocess", choices=("none", "pca", "pca-quantize"), default="none",
                   help="none (default): raw 128-d embeddings; pca: PCA + whitening; pca-quantize: also clipped to "
                        "[-2, 2] and quantised to 0..255, the released AudioSet embeddings' format")
    g.add_argument("--frames-per-second", type=int, default=1,
                   help="frames per segment whose pool5 maps are averaged (default 1: the frame at the centre of "
                        "each second; AVE's features averaged 16)")
    g.add_argument("--frame-size", type=int, default=224,
                   help="frames are resized to this square size (default 224 -> a 7x7 pool5 map; a multiple of 32)")
    g.add_argument("--video-pooling", choices=("none", "mean"), default="none",
                   help="none (default): the 7x7x512 map; mean: averaged over positions to 512")
    g.add_argument("--no-video", action="store_true", help="do not decode video or run VGG-19: video features are zero")
    g.add_argument("--device", default=None, help="torch device for the models (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored feature dtype")
    g = p.add_argument_group("text, labels, splits")
    g.add_argument("--captions", type=Path, help="CSV clip_id,caption (any number of captions per clip): per-clip text")
    g.add_argument("--caption-policy", choices=("first", "each"), default="first",
                   help="first (default): a clip's first caption; each: every caption its own clip (id CLIP#k)")
    g.add_argument("--labels", type=Path,
                   help="CSV clip_id,class[,start,end][,split]: classes, per-segment labels and train/val/test splits "
                        "(without it: one class 'unlabeled', a pretrain split only)")
    g.add_argument("--prompts", type=Path, help="CSV label,prompt for the class prompts (default: the class name)")
    g.add_argument("--splits", type=_fractions, default=(0.8, 0.1, 0.1),
                   help="train,val,test fractions for --labels without a split column (default 0.8,0.1,0.1; files are "
                        "shuffled with --seed, all windows of a file stay in one split)")
    g.add_argument("--text-featurizer", choices=("hashed", "bert"), default="hashed",
                   help="hashed: the offline featurizer (default); bert: a BERT on disk (--bert-path), never downloaded")
    g.add_argument("--text-dim", type=int, default=768, help="width of the hashed text embeddings (default 768)")
    g.add_argument("--bert-path", type=Path, help="folder of a saved BERT model (for --text-featurizer bert)")
    g.add_argument("--bert-keep-ids", type=Path, help="JSON list/dict of BERT token ids to keep")
    g = p.add_argument_group("operation")
    g.add_argument("--workers", type=int, default=0, help="decode processes (default 0: decode in this process)")
    g.add_argument("--max-bad-fraction", type=float, default=0.1,
                   help="fail if more than this fraction of the files is unusable (default 0.1)")
    g.add_argument("--restart", action="store_true", help="discard an unfinished run of other inputs/settings")
    g.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> str:
    """Run the extraction the parsed ``args`` describe; returns the line(s) to print."""
    from .run import ExtractSettings, extract

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = ExtractSettings(
        segments=args.segments, window=args.window, frames_per_second=args.frames_per_second,
        frame_size=args.frame_size, video_pooling=args.video_pooling, video=not args.no_video, dtype=args.dtype,
        vggish_postprocess=args.vggish_postprocess, captions=_path(args.captions), caption_policy=args.caption_policy,
        labels=_path(args.labels), prompts=_path(args.prompts), splits=args.splits,
        text_featurizer=args.text_featurizer, text_dim=args.text_dim, bert_path=_path(args.bert_path),
        bert_keep_ids=_path(args.bert_keep_ids), vggish_weights=_path(args.vggish_weights),
        vggish_pca_params=_path(args.vggish_pca_params), vgg19_weights=_path(args.vgg19_weights),
        random_weights=args.random_weights, seed=args.seed, workers=args.workers,
        max_bad_fraction=args.max_bad_fraction, device=device)
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
    if args.random_weights:
        lines.append("warning: random weights (tests and smoke runs only); the manifest says so")
    return "\n".join(lines)


def _path(value):
    return None if value is None else str(value)
