"""Steps per second and peak memory of one pretraining step, ours vs the authors' way, on the CPU.

Each (contestant, shape) runs in its own process, one after the other, so peak RSS is its own;
the ratio is between runs of this same invocation on this same machine.

    python -m profiles.cpu_train_step [--steps 4] [--shapes default,paper] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(contestant: str, shape: str, steps: int) -> dict:
    """Runs in a child process: warm up once, then time `steps` steps."""
    import resource

    import torch

    from bench.train_step_contestants import make_step

    torch.set_flush_denormal(True)
    step = make_step(contestant, shape)
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"contestant": contestant, "shape": shape, "seconds_per_step": statistics.median(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--shapes", default="default,paper")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("CONTESTANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps)))
        return
    rows = []
    for shape in args.shapes.split(","):
        for contestant in ("codaar", "authors"):
            child = ["--steps", str(args.steps), "--child", contestant, shape]
            out = subprocess.run([sys.executable, "-m", "profiles.cpu_train_step", *child], capture_output=True,
                                 text=True, check=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| shape | contestant | s/step | steps/s | peak RSS (MiB) | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        authors = next(r for r in rows if r["shape"] == row["shape"] and r["contestant"] == "authors")
        print(f"| {row['shape']} | {row['contestant']} | {row['seconds_per_step']:.3f} | "
              f"{1 / row['seconds_per_step']:.2f} | {row['peak_rss_mib']:.0f} | "
              f"{authors['seconds_per_step'] / row['seconds_per_step']:.1f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
