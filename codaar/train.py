"""`python -m codaar.train`: the main job.

The full CoDAAR trainer (encoders, decoders, CPC, data, checkpoints) is not built yet. Until it
is, this runs the cross-modal quantizer alone, at the paper's shapes, on random latents drawn
around shared event centres (so the modalities have something to agree on), and reports what a
training run would: losses, perplexities, codes used, cross-modal index agreement, speed.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from tqdm import tqdm

from codaar.quantizer import CrossModalQuantizer
from codaar.quantizer_config import PRESETS

NOT_YET = ("note: the CoDAAR trainer (encoders, decoders, CPC, data) is not built yet; "
           "this runs the quantizer alone on random latents.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m codaar.train",
        description="Run CoDAAR quantizer training steps on random clustered latents (the trainer comes later).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--batch-size", type=int, default=80, help="clips per step (B)")
    parser.add_argument("--frames", type=int, default=10, help="segments per clip (T)")
    parser.add_argument("--num-codes", type=int, default=800, help="codes per modality (K)")
    parser.add_argument("--dim", type=int, default=256, help="latent dimension per modality (D)")
    parser.add_argument("--modalities", default="video,audio,text", help="comma-separated; AV = video,audio")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="official")
    parser.add_argument("--events", type=int, default=10, help="event centres the latents are drawn around")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true", help="run the quantizer in float64 (the authors' precision)")
    return parser.parse_args(argv)


def random_batch(args, centres: torch.Tensor, offsets: torch.Tensor, generator: torch.Generator, modalities):
    """Clips whose frames follow one event each (switching now and then), seen by every modality
    through its own offset, with independent noise."""
    events = torch.randint(0, args.events, (args.batch_size, 1), generator=generator)
    switch = torch.rand(args.batch_size, args.frames, generator=generator) < 0.2
    drawn = torch.randint(0, args.events, (args.batch_size, args.frames), generator=generator)
    labels = torch.where(switch, drawn, events.expand(-1, args.frames))
    return {
        m: centres[labels] + offsets[i] + 0.3 * torch.randn(args.batch_size, args.frames, args.dim, generator=generator)
        for i, m in enumerate(modalities)
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    print(NOT_YET)
    torch.manual_seed(args.seed)
    quantizer = CrossModalQuantizer(modalities=modalities, num_codes=args.num_codes, dim=args.dim, preset=args.preset)
    dtype = torch.float64 if args.float64 else torch.float32
    quantizer = quantizer.to(dtype).train()
    generator = torch.Generator().manual_seed(args.seed)
    centres = torch.randn(args.events, args.dim, generator=generator)
    offsets = 0.3 * torch.randn(len(modalities), args.dim, generator=generator)

    started = time.perf_counter()
    progress = tqdm(range(args.steps), desc="quantizer", unit="step", dynamic_ncols=True)
    for _ in progress:
        batch = {m: z.to(dtype) for m, z in random_batch(args, centres, offsets, generator, modalities).items()}
        out = quantizer(batch)
        progress.set_postfix(loss=f"{out.loss.item():.4f}", ppl=f"{out.metrics[f'perplexity/{modalities[0]}'].item():.1f}")
    elapsed = time.perf_counter() - started

    summary = {"loss": out.loss.item(), "steps_per_second": args.steps / elapsed}
    summary.update({name: float(value) for name, value in out.losses.items()})
    summary.update({name: float(value) for name, value in out.metrics.items()})
    print(f"\nquantizer-only run: {args.steps} steps of B={args.batch_size} T={args.frames} K={args.num_codes} "
          f"D={args.dim}, modalities {'/'.join(modalities)}, preset {args.preset}, {dtype}")
    print(f"  speed          {summary['steps_per_second']:.1f} steps/s on {quantizer.codebook.device}")
    print(f"  loss           {summary['loss']:.4f} (commitment + DQA)")
    for m in modalities:
        print(f"  {m:<14} perplexity {summary[f'perplexity/{m}']:7.1f}   codes used in the last batch "
              f"{int(summary[f'codes_used/{m}'])}/{args.num_codes}")
    for a, b in itertools.combinations(modalities, 2):
        print(f"  agreement {a}-{b}: {summary[f'agreement/{a}-{b}']:.3f} of frames share an index")
    print(NOT_YET)
    return summary


if __name__ == "__main__":
    main()
