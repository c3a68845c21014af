"""Every production launch of the Triton kernels, compiled ahead of time for A100 (sm_80) and H100
(sm_90) on a machine without a GPU, and what the compiler made of it.

The launchers run on CPU tensors of the paper's shapes under `record_launches()` (utilities.py),
once per dtype path (fp32 exact, tf32, bf16 and fp16 latents; float32 and float64 EMA state) and
per modality count (and at about the scaled shape's frame count for the soft-usage kernels, which
pick larger tiles there), so every launch is recorded as production would issue it; an autotuned launch
stands for each of its configs. Each distinct launch is specialised as Triton's runtime would
specialise those arguments (its own binder: dtypes, 16-byte alignment, integer divisibility) and
compiled with `triton.compile(..., target=GPUTarget("cuda", cc, 32))`. From the result:

- registers, stack, spill stores / loads: the log of the ptxas run inside that very compilation;
- local memory, static shared memory: `cuobjdump --dump-resource-usage` of the cubin; dynamic
  shared memory (what Triton launches with): the kernel's metadata;
- tensor-core MMA instructions: `HMMA` (mma.sync) and, on sm_90, `HGMMA` (the SASS of PTX's
  wgmma) in `cuobjdump -sass`; FFMA for comparison;
- theoretical occupancy: resident warps per SM from registers, shared memory and warps per block
  with the documented per-SM limits of each architecture (CUDA occupancy calculator rules).

`problems(record)` states the rules CI enforces (tests/test_kernel_compiled.py):
profiles/compiled.py writes the table. Compilation happens in worker processes (`compile_all`):
the kernels must be decorated with the interpreter off, and a fresh Triton cache directory per
run means nothing from an earlier run can hide a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The paper's shapes: B=80 clips of T=10 frames, K=800 codes of D=256 dims.
BATCH, FRAMES, NUM_CODES, DIM = 80, 10, 800, 256
# clips for the soft-usage kernels' large-tile tier (the scaled shape has 6,554): 64,000 frames, divisible
# by 16 like the paper's 800, so Triton specialises N alike and the assign variants are the same ones
MANY_BATCH = 6400
MODALITY_COUNTS = (2, 3)
EMA_MODALITY_COUNTS = (2, 3, 4)  # the padded-modality EMA + CSA kernel serves any M
MMA_OPCODES = ("HMMA", "HGMMA")
MMA_KERNELS = ("_assign_kernel", "_soft_usage_fwd_kernel", "_soft_usage_bwd_row_kernel", "_soft_usage_bwd_dz_kernel")
TENSOR_CORE_PATHS = ("tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Arch:
    """Per-SM limits (CUDA C Programming Guide, compute capabilities table; occupancy calculator)."""

    capability: int
    gpu: str
    sms: int
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    register_unit_per_warp: int = 256  # registers are allocated per warp in units of 256
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    shared_per_sm: int = 0  # bytes usable by blocks
    shared_per_block: int = 0  # opt-in maximum of one block
    shared_reserved_per_block: int = 1024  # the runtime's own share of every block
    shared_unit: int = 128

    @property
    def name(self) -> str:
        return f"sm_{self.capability}"


ARCHS = {
    80: Arch(80, "A100", sms=108, shared_per_sm=164 * 1024, shared_per_block=163 * 1024),
    90: Arch(90, "H100 SXM", sms=132, shared_per_sm=228 * 1024, shared_per_block=227 * 1024),
}


def occupancy(arch: Arch, registers: int, shared: int, warps: int) -> tuple[float, str]:
    """(resident warps / max warps per SM, what limits it) for one block of `warps` warps using
    `registers` per thread and `shared` bytes (static + dynamic)."""
    per_warp = -(-registers * 32 // arch.register_unit_per_warp) * arch.register_unit_per_warp
    limits = {
        "warps": arch.max_warps_per_sm // warps,
        "blocks": arch.max_blocks_per_sm,
        "registers": (arch.registers_per_sm // per_warp) // warps if per_warp else arch.max_blocks_per_sm,
    }
    block_shared = shared + arch.shared_reserved_per_block
    block_shared = -(-block_shared // arch.shared_unit) * arch.shared_unit
    limits["shared memory"] = arch.shared_per_sm // block_shared
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "registers"))
    return blocks * warps / arch.max_warps_per_sm, limiter


# ------------------------------------------------------------------------------- the launches
@dataclass
class Variant:
    kernel: str
    path: str  # the dtype path (and the switches that specialise the kernel)
    config: dict  # block sizes and the like, num_warps, num_stages
    fn: Any  # the JITFunction
    args: tuple
    kwargs: dict  # constexprs and launch options

    @property
    def label(self) -> str:
        return f"{self.kernel} [{self.path}] {config_label(self.config)}"


def config_label(config: dict) -> str:
    blocks = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in config.items() if k.startswith("BLOCK_"))
    return f"{blocks} w{config['num_warps']} s{config['num_stages']}".strip()


def _latents(dtype: torch.dtype, num_mod: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_mod, BATCH * FRAMES, DIM, generator=gen).to(dtype)
    codebook = torch.randn(num_mod, NUM_CODES, DIM, generator=gen).to(dtype)
    return z, codebook


def _record_paths() -> list[tuple[str, Any]]:
    """(path label, recorded launches) for every dtype path and modality count production serves."""
    from . import utilities
    from .assign_triton import assign_triton
    from .dta_accumulate_triton import dta_accumulate_triton
    from .ema_csa_update import EmaCsaConfig
    from .ema_csa_update_triton import ema_csa_update_triton
    from .soft_usage_triton import soft_usage_backward, soft_usage_forward

    recorded = []
    latent_paths = {"fp32-ieee": (torch.float32, False), "tf32": (torch.float32, True),
                    "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}
    for path, (dtype, tf32) in latent_paths.items():
        z, codebook = _latents(dtype, 3)
        with utilities.record_launches() as launches:
            assign_triton(z, codebook, allow_tf32=tf32)
            _, lse, _, _ = soft_usage_forward(z, codebook, FRAMES, allow_tf32=tf32)
            grad = torch.zeros(3, BATCH, NUM_CODES)
            soft_usage_backward(z, codebook, FRAMES, lse, grad, allow_tf32=tf32)
            # the soft-usage kernels' large-tile tier (MANY_FRAMES), at about the scaled shape's frame count
            many = torch.zeros(1, MANY_BATCH * FRAMES, DIM, dtype=dtype)
            _, lse, _, _ = soft_usage_forward(many, codebook[:1], FRAMES, allow_tf32=tf32)
            soft_usage_backward(many, codebook[:1], FRAMES, lse, torch.zeros(1, MANY_BATCH, NUM_CODES),
                                allow_tf32=tf32)
        recorded.append((path, launches))
    for num_mod in MODALITY_COUNTS:
        idx = torch.randint(0, NUM_CODES, (num_mod, BATCH * FRAMES))
        # DTA on (partners' latents) for every latent dtype; off (plain EMA k-means) for fp32
        for dtype, cross in ((torch.float32, 0.2), (torch.bfloat16, 0.2), (torch.float16, 0.2), (torch.float32, 0.0)):
            z, _ = _latents(dtype, num_mod)
            for deterministic in (False, True):
                with utilities.record_launches() as launches:
                    dta_accumulate_triton(z, idx, NUM_CODES, 0.6, cross, deterministic=deterministic)
                name = str(dtype).removeprefix("torch.")
                recorded.append((f"{name} M={num_mod}{' cross' if cross else ''}", launches))
    # the presets' switches (official: Laplace smoothing, transient CSA; paper: eps, persistent CSA),
    # and the count floor with the official ones
    switches = (("official", True, False, 0.0), ("paper", False, True, 0.0), ("official floor", True, False, 1.0))
    for num_mod in EMA_MODALITY_COUNTS:
        for dtype in (torch.float32, torch.float64):
            for preset, laplace, persistent, floor in switches:
                codebook = torch.ones(num_mod, NUM_CODES, DIM, dtype=dtype)
                state = [codebook, codebook.clone(), torch.ones(num_mod, NUM_CODES, dtype=dtype),
                         torch.zeros(NUM_CODES, dtype=torch.int64)]
                sums, counts = torch.zeros_like(codebook), torch.zeros(num_mod, NUM_CODES, dtype=dtype)
                config = EmaCsaConfig(decay=0.99, eps=1e-5, laplace_smoothing=laplace,
                                      csa_order=tuple(reversed(range(num_mod))), csa_persistent=persistent,
                                      dead_after=300, active_window=100, count_floor=floor)
                with utilities.record_launches() as launches:
                    ema_csa_update_triton(*state, sums, counts, config)
                recorded.append((f"{str(dtype).removeprefix('torch.')} M={num_mod} {preset}", launches))
    return recorded


def _expand(launch) -> list[tuple[Any, dict]]:
    """(JITFunction, kwargs) per configuration a launch can run with (each autotune config), with the
    values of the kernel's `triton.heuristics` (EVEN_D) for that configuration."""
    from triton.runtime.autotuner import Autotuner, Heuristics

    kernel = launch.kernel
    if isinstance(kernel, Autotuner):
        configs = [{**launch.kwargs, **cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
                   for cfg in kernel.configs]
        kernel = kernel.fn
    else:
        configs = [{"num_warps": 4, "num_stages": 3, **launch.kwargs}]  # Triton's launch defaults
    expanded = []
    for kwargs in configs:
        fn = kernel
        while isinstance(fn, Heuristics):  # as Heuristics.run: each value from the arguments and the config
            kwargs = {**kwargs, **{name: rule({**dict(zip(fn.arg_names, launch.args)), **kwargs})
                                   for name, rule in fn.values.items()}}
            fn = fn.fn
        expanded.append((fn, kwargs))
    return expanded


_CONFIG_KEYS = re.compile(r"^(BLOCK_\w+|num_warps|num_stages)$")


def production_variants() -> list[Variant]:
    """Distinct (kernel, specialisation, config) compilations production can launch, each labelled
    with every dtype path that launches it. Needs the kernels imported with the interpreter off."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from .utilities import interpreter_enabled

    if interpreter_enabled():
        raise RuntimeError("ahead_of_time: production launches need TRITON_INTERPRET unset or 0")
    backend = make_backend(GPUTarget("cuda", 90, 32))  # the specialisation rules are the same for sm_80
    variants: dict[str, Variant] = {}
    for path, launches in _record_paths():
        for launch in launches:
            for fn, kwargs in _expand(launch):
                binder = create_function_from_signature(fn.signature, fn.params, backend)
                _, specialization, _ = binder(*launch.args, **kwargs)
                options = {k: kwargs[k] for k in ("num_warps", "num_stages")}
                key = f"{fn.__name__}|{specialization}|{options}"
                if key in variants:
                    if path not in variants[key].path.split(", "):
                        variants[key].path += f", {path}"
                    continue
                config = {k: v for k, v in kwargs.items() if _CONFIG_KEYS.match(k)}
                variants[key] = Variant(fn.__name__, path, config, fn, launch.args, kwargs)
    return list(variants.values())


# ------------------------------------------------------------------------------ the compiler
def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _ptxas_log(log: str) -> dict:
    found = {}
    for key, pattern in (("registers", r"Used (\d+) registers"), ("stack", r"(\d+) bytes stack frame"),
                         ("spill_stores", r"(\d+) bytes spill stores"), ("spill_loads", r"(\d+) bytes spill loads")):
        match = re.search(pattern, log)
        if match is None:
            raise RuntimeError(f"ahead_of_time: no {key!r} in the ptxas log:\n{log}")
        found[key] = int(match.group(1))
    return found


def _cubin_facts(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    count = {op: sum(1 for o in opcodes if o == op) for op in (*MMA_OPCODES, "FFMA")}
    return {
        "local": int(re.search(r"LOCAL:(\d+)", usage).group(1)),
        "static_shared": int(re.search(r"SHARED:(\d+)", usage).group(1)),
        "hmma": count["HMMA"],
        "hgmma": count["HGMMA"],
        "ffma": count["FFMA"],
    }


def compile_variant(variant: Variant, capability: int) -> dict:
    """Compile one variant for sm_<capability>; the facts of the result (or its error)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    arch = ARCHS[capability]
    record = {"kernel": variant.kernel, "path": variant.path, "config": config_label(variant.config),
              "arch": arch.name, "num_warps": variant.config["num_warps"]}
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    fn = variant.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*variant.args, **variant.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, variant.kwargs, bound, specialization, options)
    log = io.StringIO()
    started = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True  # Triton prints its own ptxas -v output: the facts of this very cubin
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as error:  # any compiler failure is a finding, not a crash
        record["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
        return record
    finally:
        knobs.nvidia.dump_ptxas_log = False
    record["compile_s"] = round(time.perf_counter() - started, 2)
    record.update(_ptxas_log(log.getvalue()))
    record.update(_cubin_facts(compiled.asm["cubin"]))
    record["dynamic_shared"] = int(compiled.metadata.shared)
    record["mma"] = record["hmma"] + record["hgmma"]
    shared = record["static_shared"] + record["dynamic_shared"]
    record["occupancy"], record["occupancy_limit"] = occupancy(arch, record["registers"], shared,
                                                               record["num_warps"])
    return record


def problems(record: dict) -> list[str]:
    """What CI refuses in one compiled variant (empty: fine)."""
    if "error" in record:
        return [f"does not compile: {record['error']}"]
    found = []
    arch = next(a for a in ARCHS.values() if a.name == record["arch"])
    if record["spill_stores"] or record["spill_loads"] or record["local"]:
        found.append(f"spills ({record['spill_stores']} B stored, {record['spill_loads']} B loaded, "
                     f"{record['local']} B local)")
    shared = record["static_shared"] + record["dynamic_shared"]
    if shared > arch.shared_per_block:
        found.append(f"needs {shared} B of shared memory, {arch.name} allows {arch.shared_per_block} B per block")
    if record["kernel"] in MMA_KERNELS:
        paths = {p.strip() for p in record["path"].split(",")}
        if paths & set(TENSOR_CORE_PATHS) and record["mma"] == 0:
            found.append("no tensor-core MMA on a tf32/bf16/fp16 path")
        if "fp32-ieee" in paths and record["mma"] > 0:
            found.append(f"{record['mma']} tensor-core MMA on the exact fp32 path")
    return found


def _worker(index: int, count: int, capabilities: list[int]) -> list[dict]:
    variants = production_variants()
    jobs = [(v, cc) for v in variants for cc in capabilities]
    return [compile_variant(v, cc) for i, (v, cc) in enumerate(jobs) if i % count == index]


def compile_all(capabilities: tuple[int, ...] = (80, 90), workers: int | None = None) -> list[dict]:
    """Compile every production variant for each capability in `workers` processes (default: one
    per CPU core); records sorted by kernel, path, config, arch."""
    workers = workers or max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="codaar-aot-") as cache:
        env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": cache,
               "TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}
        caps = ",".join(str(c) for c in capabilities)
        procs = [subprocess.Popen([sys.executable, "-m", __name__, f"{i}/{workers}", caps], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(workers)]
        records = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"ahead_of_time: worker failed ({proc.returncode}):\n{err[-4000:]}")
            records += json.loads(out)
    order = {"_assign_kernel": 0}
    return sorted(records, key=lambda r: (order.get(r["kernel"], 1), r["kernel"], r["path"], r["config"], r["arch"]))


if __name__ == "__main__":  # one worker: python -m codaar_kernels.ahead_of_time INDEX/COUNT 80,90
    position, total = (int(x) for x in sys.argv[1].split("/"))
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON
        results = _worker(position, total, [int(c) for c in sys.argv[2].split(",")])
    print(json.dumps(results))
