"""Where the feature models' weights come from: a local file, the published file through torch
hub's cache, or (tests and smoke runs only) a seeded random initialisation.

Files are read without running code: ``.safetensors``, or ``.pth`` through
``torch.load(weights_only=True)`` (torch's allow-list unpickler), widened only by the numpy
array/dtype names that the VGGish PCA file (a dict of numpy arrays) needs. The SHA-256 of every
file used goes into the manifest. Nothing is downloaded at import time; a download happens only
when the user gave no file, into torch hub's standard cache (``$TORCH_HOME/hub/checkpoints``), and
a failed download stops with a message that says how to give a local file instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError


@dataclass(frozen=True)
class Published:
    url: str
    what: str
    option: str  # the command-line option that gives a local copy instead


PUBLISHED = {
    "vgg19": Published("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                       "torchvision's VGG19_Weights.IMAGENET1K_V1", "--vgg19-weights"),
    "vggish": Published("https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
                        "the VGGish weights (torchvggish release v0.1)", "--vggish-weights"),
    "vggish_pca": Published(
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
        "the VGGish PCA parameters (torchvggish release v0.1)", "--vggish-pca-params"),
}
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")  # torch hub's convention: name-<sha256 prefix>.ext


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _numpy_globals():
    """The numpy names an array pickle uses, under numpy 2's and numpy 1's module spellings."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    dtype_classes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int8", "int16", "int32",
                                                       "int64", "uint8", "bool")]
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtype_classes]


def _gist(exc: Exception) -> str:
    """The informative line of a load error (torch's weights-only refusal is many lines of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "Can only build" in line:
            return line[:300]
    return lines[0][:300] if lines else "no message"


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a ``.safetensors`` or ``.pth`` file, executing nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weight file")
    expected = "a state_dict in a .safetensors file or a .pth file that torch.load(weights_only=True) reads"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, zip errors, header errors all mean the same here
        raise DataFormatError(path, "weights", expected, f"unreadable ({type(exc).__name__}: {_gist(exc)})") from None
    if not isinstance(state, dict):
        raise DataFormatError(path, "weights", "a dict of named tensors", type(state).__name__)
    tensors = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise DataFormatError(path, f"weights[{name!r}]", "a tensor or numpy array", type(value).__name__)
        tensors[str(name)] = value
    return tensors


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Copy ``state`` into ``module`` after checking that every parameter is there with its shape.
    Names the module does not have (VGG-19's classifier) are ignored."""
    for name, target in module.state_dict().items():
        if name not in state:
            raise DataFormatError(path, f"weights[{name!r}]", f"a tensor of shape {list(target.shape)}", "missing")
        value = state[name]
        if tuple(value.shape) != tuple(target.shape):
            if value.numel() == target.numel() and value.ndim <= 2 and target.ndim <= 2:
                value = value.reshape(target.shape)  # e.g. PCA means stored as a [128, 1] column
            else:
                raise DataFormatError(path, f"weights[{name!r}]", f"shape {list(target.shape)}",
                                      f"shape {list(value.shape)}")
        if not value.is_floating_point():
            raise DataFormatError(path, f"weights[{name!r}]", "floating-point values", f"dtype {value.dtype}")
        with torch.no_grad():
            target.copy_(value)


def cached_download(name: str) -> Path:
    """The published file for ``name`` from torch hub's cache, downloaded there first if absent."""
    published = PUBLISHED[name]
    filename = published.url.rsplit("/", 1)[-1]
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_PREFIX.search(filename)
    try:
        torch.hub.download_url_to_file(published.url, str(target), hash_prefix=match.group(1) if match else None)
    except Exception as exc:
        raise RuntimeError(
            f"could not download {published.what} from {published.url} ({type(exc).__name__}: {exc}); "
            f"give a local copy with {published.option} PATH (or put {filename} in {target.parent}); "
            f"--random-weights is for tests and smoke runs only") from None
    return target


def weight_file(name: str, path=None) -> tuple[Path, dict]:
    """The file to load for ``name`` (the user's, else the published one) and its manifest record."""
    if path is not None:
        path = Path(path)
        source = {"source": "file"}
    else:
        path = cached_download(name)
        source = {"source": "published", "url": PUBLISHED[name].url}
    return path, {**source, "file": path.name, "sha256": sha256_of(path)}
