"""Command-line flags for the built-in data set, shared by the programs that build it from flags:
`python -m codaar.data synth` and `python -m codaar.evaluate baselines`."""

from __future__ import annotations

import argparse

from .synthetic import PRESETS, SyntheticConfig, synthetic_config


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 64 or 7,7,512, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def add_synthetic_flags(p: argparse.ArgumentParser) -> None:
    """The built-in data set's preset, seed and size overrides."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="default: CPU-sized (audio 128, video 64, text 10x128); paper: the paper's shapes "
                        "(video 7x7x512, text 10x768, ~3 GB); avvp: two events per clip, some single-modality, "
                        "per-modality labels; hard: the default's sizes with held-out test factors (speakers, "
                        "backgrounds, caption templates), misaligned and single-modality events, misleading "
                        "backgrounds and per-clip captions")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--num-classes", type=int, help="event classes (default 10)")
    p.add_argument("--num-pretrain", type=int, help="unlabeled pretraining clips")
    p.add_argument("--num-train", type=int, help="labeled downstream training clips")
    p.add_argument("--num-val", type=int, help="labeled validation clips")
    p.add_argument("--num-test", type=int, help="labeled test clips")
    p.add_argument("--audio-dim", type=int, help="audio features per segment (default 128)")
    p.add_argument("--video-shape", type=parse_shape, help="video features per segment: D or H,W,C (default 64)")
    p.add_argument("--text-dim", type=int, help="text embedding width (default 128; paper 768)")
    p.add_argument("--text-tokens", type=int, help="tokens per prompt (default 10)")
    p.add_argument("--noise-std", type=float, help="observation noise relative to unit-variance features (default 0.1)")


def synthetic_config_of(args: argparse.Namespace) -> SyntheticConfig:
    """The built-in data set's config from the flags of `add_synthetic_flags`."""
    return synthetic_config(args.preset, seed=args.seed, num_classes=args.num_classes, num_pretrain=args.num_pretrain,
                            num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                            audio_dim=args.audio_dim, video_shape=args.video_shape, text_dim=args.text_dim,
                            text_tokens=args.text_tokens, noise_std=args.noise_std)
