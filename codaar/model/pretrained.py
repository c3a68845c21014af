"""A trained model from its checkpoint: verified, on the CPU in float32, frozen, in eval mode.

One loader for every reader of trained models: `CoDAARModel.from_checkpoint`, the evaluation
(`codaar.evaluate`) and the code export (`codaar.encode`). Every problem (no checkpoint, a corrupt
tensor file, non-finite weights, weights that do not fit the settings in meta.json) raises
`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from codaar.model.codaar_model import CoDAARModel
from codaar.train import checkpoint as ckpt
from codaar.train.checkpoint import CheckpointError
from codaar.train.config import TrainConfig, saved_configs

__all__ = ["CheckpointError", "Pretrained", "load_pretrained"]


@dataclass
class Pretrained:
    model: CoDAARModel
    meta: dict  # checkpoint meta.json
    train_config: TrainConfig  # the run's settings
    path: Path  # the checkpoint folder

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def tensors_sha256(self) -> str:
        """SHA-256 of the checkpoint's tensor file (recorded in meta.json since format version 2)."""
        return self.meta.get("tensors_sha256") or ckpt.file_digest(self.path / ckpt.TENSORS)


def load_pretrained(path: str | Path) -> Pretrained:
    """Model (weights, codebooks) of a checkpoint folder or a run folder (its `latest` checkpoint)."""
    tensors, meta = ckpt.load_checkpoint(Path(path))
    folder = ckpt.resolve_checkpoint(Path(path))
    train_config, model_config = saved_configs(meta, str(folder / ckpt.META))
    weights = ckpt.prefixed(tensors, "model")
    broken = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise CheckpointError(f"{folder / ckpt.TENSORS}: non-finite values in {', '.join(broken[:5])}"
                              f"{' and more' if len(broken) > 5 else ''} (the run diverged); use an earlier "
                              f"checkpoint")
    try:
        model = CoDAARModel(model_config)
        model.load_state_dict(weights)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:400]
        raise CheckpointError(f"{folder / ckpt.TENSORS}: the weights do not fit the model of meta.json "
                              f"'model_config' ({first})") from None
    model.float()
    model.quantizer.freeze(True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return Pretrained(model, meta, train_config, folder)
