"""Checkpoints of a training run: safetensors for every tensor, JSON for everything else, no pickle.

A checkpoint is a folder `step-000123/` holding `tensors.safetensors` and `meta.json`. It is
written under a temporary name and renamed into place, and the run's `latest` file (one line, the
folder name) is replaced atomically after that, so a run killed at any instant leaves either the
previous checkpoint or the new one, never half of one.

A checkpoint proves itself (format version 3). The metadata (step, settings, optimizer groups) is
sealed inside the tensor file, in the safetensors header's `__metadata__`, so the SHA-256 of that
file covers the metadata, every tensor's bytes, dtype and shape alike; meta.json is a readable copy
plus that SHA-256. A load checks the digest, then that meta.json says exactly what the sealed copy
says, then that the folder's name is its step; any difference is refused naming the file and the
field. Format versions 1 and 2 sealed nothing (version 1 recorded no digest either), so they
cannot be verified and are refused; `seal_legacy` rewrites one the user vouches for. Readers check
the tensors against the model they build (`check_tensors`): a tensor of another dtype or shape is
refused, never converted.

A run reads only inside itself: `latest` must be a regular file naming a `step-*` folder of the
same `checkpoints/` folder, and no link may be followed on the way (the `checkpoints` folder, the
pointer, the checkpoint folder, its two files). Errors never quote what a file holds.

What goes in: the model's state_dict (the quantizer's codebooks, EMA sums and counts, dead-code
counters and update count are buffers in it), the optimizer's state and the step. No RNG state is
needed: the trainer derives every step's random draws from (seed, rank, step), so a resumed run
continues exactly. The trainer writes in the background (`codaar.run_folder.checkpoint_writer`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

FORMAT = "codaar-checkpoint"
VERSION = 3  # 3: the metadata sealed in the tensor file; 2: SHA-256 of the tensors only; 1: no digest
READABLE_VERSIONS = (3,)
LEGACY_VERSIONS = (1, 2)  # readable only after `seal_legacy`
LATEST = "latest"
META, TENSORS = "meta.json", "tensors.safetensors"
SEALED_KEY = "codaar"  # the safetensors __metadata__ entry holding the sealed metadata
FOLDER_NAME = re.compile(r"step-(\d{7,})")
_POINTER_MAX_BYTES = 256  # `latest` holds one folder name; anything longer is not one

# safetensors' dtype names; every tensor a checkpoint holds has one of these.
DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


class CheckpointError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- optimizer
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (keyed `optimizer/<param>/<name>`, left where they
    are: the writer copies the whole state to the host at once) and JSON."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{param_id}/{name}"] = value.detach()
            else:
                plain.setdefault(str(param_id), {})[name] = value
    # A capturable optimizer (--cuda-graph) holds its learning rate as a device tensor: stored as a number.
    groups = [{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "plain_state": plain}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, optimizer: torch.optim.Optimizer | None = None,
                        where: Path | str = TENSORS) -> dict:
    """The optimizer state_dict of a checkpoint. With `optimizer`, each state tensor is checked first
    against the parameter it belongs to (moments: its shape and dtype; `step`: a floating scalar),
    since `Optimizer.load_state_dict` would convert a tensor of another dtype silently."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, param_id, name = key.split("/", 2)
            state.setdefault(int(param_id), {})[name] = value
    if optimizer is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for param_id, values in state.items():
            if not 0 <= param_id < len(params):
                raise CheckpointError(f"{where}: tensor 'optimizer/{param_id}/...': no parameter {param_id} in "
                                      f"this model ({len(params)} parameters)")
            for name, value in values.items():
                key = f"optimizer/{param_id}/{name}"
                if name == "step":
                    _check_one(where, key, value, (), None, floating=True)
                else:
                    _check_one(where, key, value, tuple(params[param_id].shape), params[param_id].dtype)
    for param_id, values in meta["plain_state"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# --------------------------------------------------------------------------- the tensor file
def write_tensor_file(path: Path, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      buffers: list[torch.Tensor], sealed: Mapping) -> str:
    """Write a safetensors file whose data section is `buffers` (host tensors, back to back, holding
    the tensors of `layout` in that order) and whose header seals `sealed` (JSON); fsync it. Returns
    its SHA-256, computed over the bytes as they are written (no second read)."""
    header, offset = {}, 0
    for name, dtype, shape in layout:
        size = _numel(shape) * _itemsize(dtype)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if offset != sum(b.numel() * b.element_size() for b in buffers):
        raise ValueError(f"{path}: the buffers hold other bytes than the layout describes")
    header["__metadata__"] = {SEALED_KEY: json.dumps(sealed, sort_keys=True)}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data then starts 8-byte aligned (safetensors' convention)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(encoded)), encoded):
            f.write(chunk)
            digest.update(chunk)
        for buffer in buffers:
            data = memoryview(buffer.view(torch.uint8).numpy()) if buffer.numel() else b""
            for start in range(0, len(data), 1 << 26):  # hashlib and write release the GIL on big blocks
                block = data[start : start + (1 << 26)]
                f.write(block)
                digest.update(block)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def host_layout(tensors: Mapping[str, torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
    """(layout, buffers) of tensors already on the host: one buffer per dtype, widest first, so every
    tensor lies aligned to its item size. Used by the synchronous `save_checkpoint`."""
    layout, buffers = [], []
    for dtype, names in group_by_dtype(tensors):
        parts = [tensors[name].detach().reshape(-1) for name in names]
        buffers.append(torch.cat(parts) if parts else torch.empty(0, dtype=dtype))
        layout += [(name, dtype, tuple(tensors[name].shape)) for name in names]
    return layout, buffers


def group_by_dtype(tensors: Mapping[str, torch.Tensor]) -> list[tuple[torch.dtype, list[str]]]:
    """The tensors' names grouped by dtype, widest dtype first; within a group by device, then name
    (so that the tensors of one device are contiguous in the group's buffer)."""
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"checkpoint tensor {name!r}: dtype {t.dtype} cannot be stored")
    dtypes = sorted({t.dtype for t in tensors.values()}, key=lambda d: (-_itemsize(d), DTYPE_NAMES[d]))
    return [(d, sorted((n for n, t in tensors.items() if t.dtype == d), key=lambda n: (str(tensors[n].device), n)))
            for d in dtypes]


# ------------------------------------------------------------------------------ save / load
def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step-<step>/` now, point `latest` at it, keep the newest `keep`
    (the trainer writes in the background instead: `checkpoint_writer.CheckpointWriter`)."""
    layout, buffers = host_layout({k: v.detach().cpu() for k, v in tensors.items()})
    return write_checkpoint(run_dir, step, layout, buffers, meta, keep)


def write_checkpoint(run_dir: Path, step: int, layout: list, buffers: list[torch.Tensor], meta: dict,
                     keep: int) -> Path:
    """Write the checkpoint of `step` atomically from host buffers (see `write_tensor_file`), point
    `latest` at it, and rotate: keep it and the `keep - 1` newest older ones; folders of later steps
    (left by a run resumed from before them) go. Kept checkpoints are verified when loaded."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    own = ("format", "version", "step", "tensors_sha256")  # the writer's to set (a loaded meta has them)
    sealed = {"format": FORMAT, "version": VERSION, "step": step, **{k: v for k, v in meta.items() if k not in own}}
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        os.chmod(staging, 0o755)
        with _naming(f"{name}/{TENSORS}"):
            digest = write_tensor_file(staging / TENSORS, layout, buffers, sealed)
        with _naming(f"{name}/{META}"), open(staging / META, "w") as f:
            json.dump({**sealed, "tensors_sha256": digest}, f, indent=1)
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
    _prune(root, name, keep)
    return final


@contextlib.contextmanager
def _naming(file: str):
    """A failed write() names no file (a full disk, say): give its OSError the file being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, file) from None
        raise


def _prune(root: Path, written: str, keep: int) -> None:
    folders = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.is_symlink()), reverse=True)
    older = [p for p in folders if p.name < written]
    for folder in [p for p in folders if p.name > written] + older[max(keep - 1, 0):]:
        shutil.rmtree(folder, ignore_errors=True)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed checkpoint writes leave (staging folders, pointer files); returns them.
    Only for a run folder this process holds the lock of (codaar.runtime.locks)."""
    root = Path(run_dir) / "checkpoints"
    leftovers = list(root.glob(".step-*")) + list(root.glob(f".{LATEST}.tmp"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(
            missing_ok=True)
    return leftovers


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path) -> str | None:
    """None if a run's checkpoint folder is one (no link: a run reads only inside itself), reads and
    proves itself (`read_meta`); else why not."""
    if Path(folder).is_symlink():
        return f"{folder}: is a symbolic link; a run reads only inside itself"
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


# ------------------------------------------------------------------ finding a run's checkpoint
def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder whose `latest` names one of its own."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if os.path.lexists(candidate / LATEST):
            if candidate != path and candidate.is_symlink():
                raise CheckpointError(f"{candidate}: is a symbolic link; a run reads its checkpoints only inside "
                                      f"its own folder")
            return _follow_latest(candidate)
    if (path / META).is_file():
        return path
    raise CheckpointError(f"{path}: no checkpoint here (expected a run folder with checkpoints/{LATEST}, "
                          f"or a folder with {META} and {TENSORS})")


def _follow_latest(root: Path) -> Path:
    """The folder `root/latest` names, which must be a `step-*` folder inside `root` reached without a
    link. The message never quotes the pointer's contents (it may be any file)."""
    pointer = root / LATEST
    expected = "a file of one line naming a checkpoint folder of this run (step-NNNNNNN)"
    kind = _file_kind(pointer)
    if kind != "regular file":
        raise CheckpointError(f"{pointer}: expected {expected}, found {kind}; a run reads only inside itself")
    try:
        with open(pointer, "rb") as f:
            raw = f.read(_POINTER_MAX_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{pointer}: unreadable ({exc.strerror})") from None
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        name = ""
    if len(raw) > _POINTER_MAX_BYTES or not FOLDER_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: expected {expected}, found {len(raw)}{'+' * (len(raw) > _POINTER_MAX_BYTES)}"
                              f" bytes that are not one (contents not shown)")
    folder = root / name
    kind = _file_kind(folder)
    if kind != "folder":
        raise CheckpointError(f"{pointer}: names {name}, which is a {kind} in {root}, not a checkpoint folder")
    return folder


def _file_kind(path: Path) -> str:
    """What `path` is, without following a link: 'regular file', 'folder', 'symbolic link', ..."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "nothing (missing)"
    except OSError as exc:
        return f"unreadable entry ({exc.strerror})"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file (a pipe, socket or device)"


def newest_verified(run_dir: Path) -> tuple[Path, list[str]]:
    """The newest checkpoint of a run that verifies, and why each newer one was passed over."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink():
        raise CheckpointError(f"{root}: is a symbolic link; a run reads its checkpoints only inside its own folder")
    passed_over = []
    for folder in sorted((p for p in root.glob("step-*") if p.is_dir() or p.is_symlink()), reverse=True):
        problem = verify(folder)
        if problem is None:
            return folder, passed_over
        passed_over.append(problem)
    raise CheckpointError(f"{root}: no checkpoint verifies" + (f" ({'; '.join(passed_over)})" if passed_over else ""))


# ------------------------------------------------------------------------------- verification
def read_meta(folder: Path) -> dict:
    """The sealed metadata of a checkpoint folder, after proving the folder: the tensor file matches
    meta.json's SHA-256, meta.json matches the metadata sealed in the tensor file field by field, and
    a `step-*` folder's name is its step."""
    folder = Path(folder)
    meta_path, tensor_path = folder / META, folder / TENSORS
    for path in (meta_path, tensor_path):
        kind = _file_kind(path)
        if kind != "regular file":
            raise CheckpointError(f"{path}: expected a regular file of a checkpoint, found {kind}")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:  # their messages quote no contents
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({_reason(exc)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: field 'format': expected {FORMAT!r}, found {_short(meta.get('format'))}")
    version = meta.get("version")
    if type(version) is int and version in LEGACY_VERSIONS:
        raise CheckpointError(f"{meta_path}: field 'version': format version {version} seals no metadata in the "
                              f"tensor file and cannot be verified; if you trust this checkpoint, seal it: "
                              f"python -c \"from codaar.run_folder.checkpoint import seal_legacy; "
                              f"seal_legacy('{folder}')\"")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{meta_path}: field 'version': expected {' or '.join(map(str, READABLE_VERSIONS))}, "
                              f"found {_short(version)}")
    recorded = meta.pop("tensors_sha256", None)
    try:
        found = file_digest(tensor_path)
    except OSError as exc:
        raise CheckpointError(f"{tensor_path}: unreadable tensors ({exc.strerror})") from None
    if found != recorded:
        raise CheckpointError(f"{tensor_path}: corrupt (SHA-256 {found[:12]}..., meta.json field 'tensors_sha256' "
                              f"records {str(recorded)[:12]}...)")
    sealed = read_sealed(tensor_path)
    difference = _first_difference(sealed, meta)
    if difference is not None:
        raise CheckpointError(f"{meta_path}: field '{difference}' differs from the metadata sealed in {TENSORS} "
                              f"(meta.json was edited: the sealed value is the one the tensors were saved with)")
    numbered = FOLDER_NAME.fullmatch(folder.name)
    if numbered and (not isinstance(sealed.get("step"), int) or int(numbered.group(1)) != sealed["step"]):
        raise CheckpointError(f"{meta_path}: field 'step': the folder {folder.name} holds step "
                              f"{_short(sealed.get('step'))}")
    return {**sealed, "tensors_sha256": found}


def read_sealed(tensor_path: Path) -> dict:
    """The metadata sealed in a safetensors header (after the file's digest was checked)."""
    try:
        with open(tensor_path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size).decode("utf-8")) if size < (1 << 27) else None
        sealed = json.loads(header["__metadata__"][SEALED_KEY])
    except (OSError, struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{tensor_path}: no sealed checkpoint metadata in its header ({_reason(exc)})") from None
    if not isinstance(sealed, dict):
        raise CheckpointError(f"{tensor_path}: the sealed metadata is not a JSON object")
    return sealed


def _first_difference(sealed, copy, path: str = "") -> str | None:
    """The dotted name of the first field where `copy` differs from `sealed` (type-exact: 1 != 1.0 != true)."""
    if isinstance(sealed, dict) and isinstance(copy, dict):
        for key in sorted(set(sealed) | set(copy)):
            where = f"{path}.{key}" if path else str(key)
            if key not in sealed or key not in copy:
                return where
            found = _first_difference(sealed[key], copy[key], where)
            if found is not None:
                return found
        return None
    if isinstance(sealed, list) and isinstance(copy, list):
        if len(sealed) != len(copy):
            return path or "."
        for i, (a, b) in enumerate(zip(sealed, copy)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    same = sealed == copy or (isinstance(sealed, float) and sealed != sealed and copy != copy)  # NaN is NaN
    return None if type(sealed) is type(copy) and same else (path or ".")


def _reason(exc: BaseException) -> str:
    """An exception's reason, for messages about files that did not parse: the OS's words, or the
    parser's position, never the text it choked on."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON at line {exc.lineno}, column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    return type(exc).__name__


def _short(value) -> str:
    """A metadata value in a message: numbers as they are, anything else by its type (a file's text
    is never quoted)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}" + (f" of {len(value)} characters" if isinstance(value, str) else "")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, sealed meta) of a checkpoint folder or a run's latest checkpoint, verified."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    try:
        tensors = load_file(folder / TENSORS)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{folder / TENSORS}: unreadable tensors ({type(exc).__name__})") from None
    return tensors, meta


def check_tensors(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: Path | str,
                  defaulted: Iterable[str] = ()) -> None:
    """Refuse a checkpoint's tensors unless they are exactly the names, shapes and dtypes of
    `expected` (a state_dict of the model its settings describe): `load_state_dict` would convert a
    tensor of another dtype silently. Names in `defaulted` may be absent (buffers that checkpoints
    older than them lack, which the model loads as defaults), never of another shape or dtype."""
    optional = set(defaulted)
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{where}: the tensors do not fit the model of meta.json 'model_config' (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]})")
    for name, want in expected.items():
        if name in found:
            _check_one(where, name, found[name], tuple(want.shape), want.dtype)


def _check_one(where, name: str, tensor: torch.Tensor, shape: tuple, dtype: torch.dtype | None,
               floating: bool = False) -> None:
    if (dtype is not None and tensor.dtype != dtype) or (floating and not tensor.is_floating_point()):
        raise CheckpointError(f"{where}: tensor '{name}': expected dtype {dtype or 'floating point'}, found "
                              f"{tensor.dtype} (refused, not converted)")
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{where}: tensor '{name}': expected shape {list(shape)}, found {list(tensor.shape)}")


def model_dtype(meta: Mapping) -> torch.dtype:
    """The floating dtype a checkpoint's model was trained in (the run setting `float64`)."""
    settings = meta.get("config")
    return torch.float64 if isinstance(settings, Mapping) and settings.get("float64") is True else torch.float32


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix/`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


# ----------------------------------------------------------------------------------- legacy
def seal_legacy(folder: Path | str) -> Path:
    """Rewrite a checkpoint of format version 1 or 2 as version 3, its meta.json sealed as it stands.

    Nothing can prove what an old meta.json says, so this is for checkpoints the user vouches for;
    a version 2 tensor file must still match its recorded SHA-256. The old folder is moved aside to
    `legacy-<name>` until the new one is in place, then removed."""
    folder = Path(folder)
    meta_path, tensor_path = folder / META, folder / TENSORS
    for path in (meta_path, tensor_path):
        if _file_kind(path) != "regular file":
            raise CheckpointError(f"{path}: expected a regular file of a checkpoint, found {_file_kind(path)}")
    try:
        original = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({_reason(exc)})") from None
    version = original.get("version") if isinstance(original, dict) else None
    if original.get("format") != FORMAT or type(version) is not int or version not in LEGACY_VERSIONS:
        raise CheckpointError(f"{meta_path}: field 'version': expected a codaar checkpoint of version 1 or 2, "
                              f"found {_short(version)}")
    if version == 2 and file_digest(tensor_path) != original.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path}: corrupt (its SHA-256 is not the one meta.json records)")
    if type(original.get("step")) is not int:
        raise CheckpointError(f"{meta_path}: field 'step': expected an integer, found {_short(original.get('step'))}")
    try:
        tensors = load_file(tensor_path)
    except Exception as exc:
        raise CheckpointError(f"{tensor_path}: unreadable tensors ({type(exc).__name__})") from None
    rest = {k: v for k, v in original.items() if k not in ("format", "version", "step", "tensors_sha256")}
    sealed = {"format": FORMAT, "version": VERSION, "step": original["step"], **rest, "sealed_from_version": version}
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        os.chmod(staging, 0o755)
        digest = write_tensor_file(staging / TENSORS, *host_layout(tensors), sealed)
        (staging / META).write_text(json.dumps({**sealed, "tensors_sha256": digest}, indent=1))
        aside = folder.with_name(f"legacy-{folder.name}")
        os.replace(folder, aside)
        os.replace(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
