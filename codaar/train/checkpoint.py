"""Checkpoints of a training run: safetensors for every tensor, JSON for everything else, no pickle.

A checkpoint is a folder `step-000123/` holding `tensors.safetensors` and `meta.json`. It is
written under a temporary name and renamed into place, and the run's `latest` file (one line, the
folder name) is replaced atomically after that, so a run killed at any instant leaves either the
previous checkpoint or the new one, never half of one.

What goes in: the model's state_dict (the quantizer's codebooks, EMA sums and counts, dead-code
counters and update count are buffers in it), the optimizer's state and the step. No RNG state is
needed: the trainer derives every step's random draws from (seed, rank, step), so a resumed run
continues exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "codaar-checkpoint"
VERSION = 1
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- optimizer
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (keyed `optimizer/<param>/<name>`) and JSON."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{param_id}/{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(param_id), {})[name] = value
    # A capturable optimizer (--cuda-graph) holds its learning rate as a device tensor: stored as a number.
    groups = [{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "plain_state": plain}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, param_id, name = key.split("/", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["plain_state"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------ save / load
def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step-<step>/` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, staging / "tensors.safetensors")
        with open(staging / "meta.json", "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, "step": step, **meta}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        final = root / name
        if final.exists():  # a rerun of the same step (after a resume): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder whose `latest` names one."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / LATEST).is_file():
            return candidate / (candidate / LATEST).read_text().strip()
    if (path / "meta.json").is_file():
        return path
    raise CheckpointError(f"{path}: no checkpoint here (expected a run folder with checkpoints/{LATEST}, "
                          f"or a folder with meta.json and tensors.safetensors)")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    folder = resolve_checkpoint(path)
    meta_path, tensor_path = folder / "meta.json", folder / "tensors.safetensors"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: field 'format'/'version': expected {FORMAT!r} version {VERSION}, "
                              f"found {meta.get('format')!r} version {meta.get('version')!r}")
    try:
        tensors = load_file(tensor_path)
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{tensor_path}: unreadable tensors ({exc})") from None
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix/`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
