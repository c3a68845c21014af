"""Checkpoints of a training run: safetensors for every tensor, JSON for everything else, no pickle.

A checkpoint is a folder `step-000123/` holding `tensors.safetensors` and `meta.json`. It is
written under a temporary name and renamed into place, and the run's `latest` file (one line, the
folder name) is replaced atomically after that, so a run killed at any instant leaves either the
previous checkpoint or the new one, never half of one. meta.json records the SHA-256 of the tensor
file, checked at every load: a checkpoint corrupted on disk is refused, never trained on, and the
rotation keeps the newest ones that verify.

What goes in: the model's state_dict (the quantizer's codebooks, EMA sums and counts, dead-code
counters and update count are buffers in it), the optimizer's state and the step. No RNG state is
needed: the trainer derives every step's random draws from (seed, rank, step), so a resumed run
continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "codaar-checkpoint"
VERSION = 2  # 2: meta.json records the SHA-256 of the tensor file; settings nested (codaar.settings)
READABLE_VERSIONS = (1, 2)
LATEST = "latest"
META, TENSORS = "meta.json", "tensors.safetensors"


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
    """Write `run_dir/checkpoints/step-<step>/` atomically, point `latest` at it, keep the newest `keep`
    checkpoints that verify (a corrupt one never takes the place of a good one)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        os.chmod(staging, 0o755)
        tensor_path = staging / TENSORS
        _save_tensors(tensors, tensor_path)
        _fsync(tensor_path)
        digest = file_digest(tensor_path)  # of the bytes on disk, as a later load reads them
        with open(staging / META, "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, "step": step, "tensors_sha256": digest, **meta}, f,
                      indent=1)
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
    _fsync(root)
    _prune(root, keep)
    return final


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file; its I/O failures (a full disk) become the OSError they are, naming `path`."""
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints that verify; delete older and corrupt ones."""
    kept = 0
    for folder in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        if kept < keep and verify(folder) is None:
            kept += 1
        elif kept:  # never delete anything before one good checkpoint is kept
            shutil.rmtree(folder, ignore_errors=True)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed checkpoint writes leave (staging folders, pointer files); returns them.
    Only for a run folder this process holds the lock of (codaar.runtime.locks)."""
    root = Path(run_dir) / "checkpoints"
    leftovers = list(root.glob(".step-*")) + list(root.glob(f".{LATEST}.tmp"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return leftovers


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path) -> str | None:
    """None if the checkpoint folder reads and its tensors match their recorded digest; else why not."""
    try:
        read_meta(folder)
    except CheckpointError as exc:
        return str(exc)
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder whose `latest` names one."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / LATEST).is_file():
            return candidate / (candidate / LATEST).read_text().strip()
    if (path / META).is_file():
        return path
    raise CheckpointError(f"{path}: no checkpoint here (expected a run folder with checkpoints/{LATEST}, "
                          f"or a folder with {META} and {TENSORS})")


def newest_verified(run_dir: Path) -> tuple[Path, list[str]]:
    """The newest checkpoint of a run that verifies, and why each newer one was passed over."""
    root = Path(run_dir) / "checkpoints"
    passed_over = []
    for folder in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        problem = verify(folder)
        if problem is None:
            return folder, passed_over
        passed_over.append(problem)
    raise CheckpointError(f"{root}: no checkpoint verifies" + (f" ({'; '.join(passed_over)})" if passed_over else ""))


def read_meta(folder: Path) -> dict:
    """meta.json of a checkpoint folder, after checking its tensors against the recorded digest
    (version 1 checkpoints recorded none)."""
    meta_path, tensor_path = folder / META, folder / TENSORS
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path}: field 'format'/'version': expected {FORMAT!r} version "
                              f"{' or '.join(map(str, READABLE_VERSIONS))}, found {found!r}")
    expected = meta.get("tensors_sha256")
    if meta["version"] >= 2:
        try:
            found = file_digest(tensor_path)
        except OSError as exc:
            raise CheckpointError(f"{tensor_path}: unreadable tensors ({exc.strerror})") from None
        if found != expected:
            raise CheckpointError(f"{tensor_path}: corrupt (SHA-256 {found[:12]}..., meta.json records "
                                  f"{str(expected)[:12]}...)")
    return meta


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint folder or a run's latest checkpoint, verified."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    try:
        tensors = load_file(folder / TENSORS)
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{folder / TENSORS}: unreadable tensors ({exc})") from None
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix/`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
