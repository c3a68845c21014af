"""Loading the authors' golden quantizer trajectories (tests/golden/README.md) into our layout.

The authors store codebooks as [K, M*D] with column blocks v | a (| t); we hold [M, K, D] with
modalities ("video", "audio"[, "text"]) in that same order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from codaar.quantizer import CrossModalQuantizer

GOLDEN_DIR = Path(__file__).parent / "golden"
NAMES = {"v": "video", "a": "audio", "t": "text"}
TRAJECTORIES = ("avt_small", "av_small", "avt_medium")


def load(case: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{case}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def letters(golden: dict) -> str:
    return str(golden["modalities"])


def to_mkd(table: np.ndarray, num_mod: int) -> torch.Tensor:
    """[K, M*D] -> [M, K, D]."""
    num_codes = table.shape[0]
    return torch.from_numpy(table).view(num_codes, num_mod, -1).transpose(0, 1).contiguous()


def latents_at(golden: dict, step: int, dtype: torch.dtype = torch.float64, grad: bool = False) -> dict:
    return {
        NAMES[c]: torch.from_numpy(golden[f"z_{c}"][step]).to(dtype).requires_grad_(grad) for c in letters(golden)
    }


def build(golden: dict, dtype: torch.dtype = torch.float64, **settings) -> CrossModalQuantizer:
    mods = letters(golden)
    torch.manual_seed(int(golden["init_seed"])) if "init_seed" in golden else None
    quantizer = CrossModalQuantizer(
        modalities=tuple(NAMES[c] for c in mods), num_codes=int(golden["K"]), dim=int(golden["D"]), **settings
    )
    return quantizer.to(dtype).train()


def set_state(quantizer: CrossModalQuantizer, golden: dict, prefix: str, index: int | None = None) -> None:
    """Load the golden buffers named `<prefix>embedding`, ... (optionally row `index` of each)."""
    mods = letters(golden)
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    with torch.no_grad():
        quantizer.codebook.copy_(to_mkd(pick(golden[f"{prefix}embedding"]), len(mods)))
        quantizer.ema_sum.copy_(to_mkd(pick(golden[f"{prefix}ema_weight"]), len(mods)))
        for i, c in enumerate(mods):
            quantizer.ema_count[i].copy_(torch.from_numpy(pick(golden[f"{prefix}ema_count_{c}"])))
        quantizer.unused_steps.copy_(torch.from_numpy(pick(golden[f"{prefix}unactivated_count"])).long())


def blockwise_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max_j |ref[m, k, j]| over (modality, row) blocks, as the golden README asks."""
    ours, ref = ours.double(), ref.double()
    return float(((ours - ref).abs().amax(-1) / ref.abs().amax(-1)).max())


def relative_error(ours, ref: np.ndarray) -> float:
    """max |x - ref| / max |ref| over a whole array."""
    ours = torch.as_tensor(ours).double().detach().numpy()
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-300))
