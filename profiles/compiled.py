"""Regenerate profiles/compiled.md and profiles/compiled.json: every production launch of the Triton
kernels compiled for sm_80 (A100) and sm_90 (H100) on this machine, no GPU needed
(codaar_kernels.ahead_of_time), and the time each kernel is predicted to take on an H100 and an
A100 at the paper and the scaled shapes, from those compiled facts.

    python profiles/compiled.py            # about 3 minutes on 2 cores; exit 1 if a rule is broken
    python profiles/compiled.py --check --arch sm_90   # the rules only, one architecture, nothing written

The prediction (a model, to be checked by the first GPU run, not a measurement): a kernel takes
max(compute, HBM, L2) plus a launch, where
  compute = (programs on the busiest SM) x (dot FLOPs per program) / (SM peak x efficiency),
    the busiest SM holding ceil(programs / SMs) programs, sharing its tensor cores / FMA units;
    efficiency: an assumed fraction of peak a Triton tile reaches, times min(1, resident warps / 8)
    (FMA) or min(1, resident warps / 4) (MMA) for latency hiding (ASSUMED below);
  HBM = compulsory bytes (inputs read once, outputs written once) / bandwidth;
  L2 = bytes every program reads (its codebook or frame tiles, re-read from L2) / L2 bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before any kernel is decorated: the compiled, not interpreted, launches

import torch
import triton

from codaar_kernels import ahead_of_time as aot
from codaar_kernels import utilities

HERE = Path(__file__).parent
COMMAND = "python profiles/compiled.py"

# Datasheet peaks (dense) and bandwidths; L2 bandwidth is not on the datasheets: an assumption.
GPUS = {
    "H100": dict(arch="sm_90", sms=132, fp32=67e12, tf32=495e12, half=989e12, hbm=3.35e12, l2=7e12),
    "A100": dict(arch="sm_80", sms=108, fp32=19.5e12, tf32=156e12, half=312e12, hbm=2.04e12, l2=4e12),
}
ASSUMED = dict(fma=0.5, wgmma=0.6, mma_sync=0.6, mma_sync_on_sm90=0.35, launch_s=3e-6)
SHAPES = {"paper": dict(num_mod=3, batch=80, frames=10, codes=800, dim=256),
          "scaled": dict(num_mod=3, batch=6554, frames=10, codes=8192, dim=256)}
PATHS = {"fp32-ieee": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}


# ------------------------------------------------------------------------------- the table
def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def table(records: list[dict]) -> list[str]:
    lines = []
    for kernel in dict.fromkeys(r["kernel"] for r in records):
        lines += [f"### `{kernel}`", "",
                  "| dtype path | config | arch | registers | spill st/ld (B) | local (B) "
                  "| shared static + dynamic (KB) | HMMA | HGMMA | FFMA | occupancy (limit) | rules |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in records if r["kernel"] == kernel):
            issues = "; ".join(aot.problems(r)) or "ok"
            if "error" in r:
                lines.append(f"| {r['path']} | {r['config']} | {r['arch']} | | | | | | | | | {issues} |")
                continue
            lines.append(
                f"| {r['path']} | {r['config']} | {r['arch']} | {r['registers']} "
                f"| {r['spill_stores']}/{r['spill_loads']} "
                f"| {r['local']} | {_kb(r['static_shared'])} + {_kb(r['dynamic_shared'])} | {r['hmma']} | {r['hgmma']} "
                f"| {r['ffma']} | {r['occupancy']:.0%} ({r['occupancy_limit']}) | {issues} |")
        lines.append("")
    return lines


# -------------------------------------------------------------------------- the prediction
def _launches(shape: dict, path: str) -> list[utilities.Launch]:
    """The launches of one quantizer step's kernels at a shape (recorded, not run)."""
    from codaar_kernels.dta_accumulate_triton import dta_accumulate_triton
    from codaar_kernels.ema_csa_update import EmaCsaConfig
    from codaar_kernels.ema_csa_update_triton import ema_csa_update_triton
    from codaar_kernels.soft_usage_triton import soft_usage_backward, soft_usage_forward

    m, frames = shape["num_mod"], shape["batch"] * shape["frames"]
    k, d = shape["codes"], shape["dim"]
    dtype, tf32 = PATHS[path]
    z, codebook = torch.empty(m, frames, d, dtype=dtype), torch.empty(m, k, d, dtype=dtype)
    with utilities.record_launches() as launches:
        _, lse, idx, _ = soft_usage_forward(z, codebook, shape["frames"], allow_tf32=tf32)
        soft_usage_backward(z, codebook, shape["frames"], lse, torch.empty(m, shape["batch"], k), allow_tf32=tf32)
        sums, counts = dta_accumulate_triton(z, idx.zero_(), k, 0.6, 0.2)
        state = [torch.empty(m, k, d), torch.empty(m, k, d), torch.ones(m, k), torch.zeros(k, dtype=torch.int64)]
        ema_csa_update_triton(*state, sums, counts, EmaCsaConfig(
            decay=0.99, eps=1e-5, laplace_smoothing=True, csa_order=(2, 1, 0), csa_persistent=False,
            dead_after=300, active_window=100))
    return launches


def _grid(launch, config: dict) -> int:
    grid = launch.grid(config) if callable(launch.grid) else launch.grid
    return math.prod(grid)


def _bytes(kernel: str, shape: dict, path: str, config: dict, programs: int) -> tuple[float, float]:
    """(compulsory HBM bytes, bytes re-read through L2) of one launch."""
    m, n, k, d = shape["num_mod"], shape["batch"] * shape["frames"], shape["codes"], shape["dim"]
    b = shape["batch"]
    elt = 2 if path == "bf16" else 4
    z, e = m * n * d * elt, m * k * d * elt
    if kernel == "_assign_kernel":
        return z + e + 16 * m * n, programs * k * d * elt + z
    if kernel == "_soft_usage_fwd_kernel":
        return z + e + 4 * m * b * k, programs * (config["BLOCK_B"] * shape["frames"] + config["BLOCK_K"]) * d * elt
    if kernel in ("_soft_usage_bwd_row_kernel", "_soft_usage_bwd_dz_kernel"):
        dz = z if kernel.endswith("dz_kernel") else 0
        return z + e + 4 * m * b * k + dz, programs * k * d * elt + z + programs * config["BLOCK_N"] * k * 4
    if kernel == "_dta_accumulate_kernel":  # read z (all modalities), scatter M*N*D fp32 atomics
        return z + m * n * d * 4 + m * k * d * 4, 0
    if kernel == "_ema_count_kernel":
        return 3 * m * k * 4, 0
    return 4 * m * k * d * 4, 0  # _ema_csa_update_kernel: read W, H; write W, E (fp32 state)


def predict(records: list[dict]) -> list[dict]:
    """Predicted time of every kernel of a quantizer step, per GPU, shape and dtype path (the best
    autotune config for assign: the one the autotuner should find)."""
    facts = {(r["kernel"], r["config"], r["arch"], p.strip()): r
             for r in records if "error" not in r for p in r["path"].split(",")}
    rows = []
    for gpu, spec in GPUS.items():
        for shape_name, shape in SHAPES.items():
            for path in PATHS:
                for launch in _launches(shape, path):
                    for fn, kwargs in aot._expand(launch):
                        config = {k: v for k, v in kwargs.items() if aot._CONFIG_KEYS.match(k)}
                        label = aot.config_label(config)
                        key_path = path if fn.__name__ in aot.MMA_KERNELS else None
                        fact = next((f for (kn, cfg, arch, p), f in facts.items()
                                     if kn == fn.__name__ and cfg == label and arch == spec["arch"]
                                     and (key_path is None or p == key_path)), None)
                        if fact is None:
                            continue
                        row = _predict_one(gpu, spec, shape_name, shape, path, fn.__name__, config, fact, launch)
                        previous = next((r for r in rows if r["key"] == row["key"]), None)
                        if previous is None:
                            rows.append(row)
                        elif row["seconds"] < previous["seconds"]:
                            rows[rows.index(previous)] = row
    return rows


def _predict_one(gpu, spec, shape_name, shape, path, kernel, config, fact, launch) -> dict:
    programs = _grid(launch, config)
    flops = launch.flops
    per_program = flops / programs if programs else 0
    warps = config["num_warps"]
    resident = max(1, round(fact["occupancy"] * 64 / warps))  # blocks per SM the resources allow
    busiest = math.ceil(programs / spec["sms"])
    resident_warps = min(busiest, resident) * warps
    if fact["mma"]:
        rate = spec["half"] if path == "bf16" and not kernel.endswith("dz_kernel") else spec["tf32"]
        if fact["hgmma"]:
            efficiency = ASSUMED["wgmma"]
        elif spec["arch"] == "sm_90":
            efficiency = ASSUMED["mma_sync_on_sm90"]
        else:
            efficiency = ASSUMED["mma_sync"]
        efficiency *= min(1.0, resident_warps / 4)
    else:
        rate, efficiency = spec["fp32"], ASSUMED["fma"] * min(1.0, resident_warps / 8)
    sm_rate = rate / spec["sms"] * efficiency
    compute = busiest * per_program / sm_rate if flops else 0.0
    hbm_bytes, l2_bytes = _bytes(kernel, shape, path, config, programs)
    terms = {"compute": compute, "HBM": hbm_bytes / spec["hbm"], "L2": l2_bytes / spec["l2"]}
    limit = max(terms, key=terms.get)
    if limit == "compute" and programs < spec["sms"]:
        limit = f"compute, {programs} programs < {spec['sms']} SMs"
    elif limit == "compute" and fact["occupancy"] <= 0.125:
        limit = f"compute, occupancy {fact['occupancy']:.0%}"
    seconds = max(terms.values()) + ASSUMED["launch_s"]
    return dict(key=(gpu, shape_name, path, kernel), gpu=gpu, shape=shape_name, path=path, kernel=kernel,
                config=aot.config_label(config), programs=programs, flops=flops, seconds=seconds, limit=limit,
                **{f"{k}_s": v for k, v in terms.items()})


def prediction_table(rows: list[dict]) -> list[str]:
    lines = ["| GPU | shape | dtype path | kernel | config | programs | GFLOP | predicted µs | limited by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpu']} | {r['shape']} | {r['path']} | `{r['kernel']}` | {r['config']} | {r['programs']} "
                     f"| {r['flops'] / 1e9:.2f} | {r['seconds'] * 1e6:.1f} | {r['limit']} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per core)")
    parser.add_argument("--check", action="store_true",
                        help="compile and apply the rules only, write nothing (another Triton version, say)")
    parser.add_argument("--arch", action="append", choices=[a.name for a in aot.ARCHS.values()],
                        help="with --check: only this architecture (repeatable; default: all)")
    args = parser.parse_args()
    if args.arch and not args.check:
        parser.error("--arch needs --check: the table covers every architecture")
    capabilities = tuple(c for c, a in aot.ARCHS.items() if not args.arch or a.name in args.arch)
    started = datetime.datetime.now()
    records = aot.compile_all(capabilities=capabilities, workers=args.workers)
    minutes = (datetime.datetime.now() - started).total_seconds() / 60
    broken = [(r, aot.problems(r)) for r in records if aot.problems(r)]
    if args.check:
        _report(records, broken, minutes, "nothing written")
        return 1 if broken else 0
    predictions = predict(records)
    meta = dict(command=COMMAND, generated=started.strftime("%Y-%m-%d %H:%M"), triton=triton.__version__,
                torch=torch.__version__, machine=f"{platform.machine()}, {os.cpu_count()} cores",
                compile_minutes=round(minutes, 1), archs={a.name: vars(a) for a in aot.ARCHS.values()},
                gpus=GPUS, assumed=ASSUMED)
    (HERE / "compiled.json").write_text(json.dumps(dict(meta, records=records, predictions=[
        {k: v for k, v in p.items() if k != "key"} for p in predictions]), indent=1) + "\n")
    header = [
        "# Every Triton kernel, compiled for A100 (sm_80) and H100 (sm_90) without a GPU", "",
        f"Generated by `{COMMAND}` on {meta['generated']} (Triton {meta['triton']}, torch {meta['torch']}, "
        f"{meta['machine']}, {minutes:.1f} min); data in `compiled.json`. Each row is one compilation that "
        "production can launch: the launchers run on CPU tensors of the paper's shapes (B=80, T=10, K=800, "
        "D=256; M = 2 and 3, and 4 for the EMA kernel; the soft-usage kernels also at 64,000 frames, "
        "about the scaled shape's, where they take larger tiles) for every dtype path, and every autotune config of "
        "assign is compiled on every path it serves (codaar_kernels/ahead_of_time.py). Registers, stack and "
        "spills come from the ptxas run inside the compilation; local and static shared memory from "
        "`cuobjdump --dump-resource-usage`; dynamic shared memory from Triton; HMMA (mma.sync) and HGMMA "
        "(wgmma) are tensor-core instructions counted in `cuobjdump -sass`; occupancy is resident warps per "
        "SM over 64, from registers, shared memory and warps with each architecture's per-SM limits.", "",
        "Rules (tests/test_kernel_compiled.py, every CI run): every variant compiles; none spills; shared "
        "memory within the architecture's per-block limit; tf32, bf16 and fp16 paths of assign and soft "
        "usage use tensor-core MMA; the exact fp32 path (`fp32-ieee`) never does.", "",
        f"**{len(records)} compilations, {len(broken)} breaking a rule.**", "",
        "## Predicted time per kernel", "",
        "A model from these facts, to be checked by the first GPU run (profiles/README.md says how it is "
        "built; ASSUMED efficiencies: " + ", ".join(f"{k} {v}" for k, v in ASSUMED.items()) + ").", "",
        *prediction_table(predictions), "",
        "## Compiled variants", "",
    ]
    (HERE / "compiled.md").write_text("\n".join(header + table(records)) + "\n")
    _report(records, broken, minutes, f"wrote {HERE / 'compiled.md'} and compiled.json")
    return 1 if broken else 0


def _report(records: list[dict], broken: list[tuple[dict, list[str]]], minutes: float, written: str) -> None:
    for record, issues in broken:
        print(f"{record['arch']} {record['kernel']} [{record['path']}] {record['config']}: {'; '.join(issues)}",
              file=sys.stderr)
    print(f"{len(records)} compilations with Triton {triton.__version__} in {minutes:.1f} min, "
          f"{len(broken)} breaking a rule; {written}")


if __name__ == "__main__":
    sys.exit(main())
