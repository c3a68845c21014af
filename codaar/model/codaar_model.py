"""CoDAARModel: encoders -> cross-modal quantizer -> CPC + decoders, one pretraining step (spec §3.13).

loss = sum_m rec/<m> + sum_m commit/<m> + dqa + cpc      (paper Eq. 10, spec §3.13 step 5)

The quantizer (codebooks, DTA, CSA, DQA, commitment, straight-through codes) is
`codaar.quantizer.CrossModalQuantizer`, used as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from codaar.model.config import ModelConfig
from codaar.model.cpc import CrossModalCPC
from codaar.model.decoders import SpatialVideoDecoder, VectorDecoder, reconstruction_loss
from codaar.model.encoders import (
    ChannelGatedVideoFeatures,
    LinearReLUProjection,
    ModalityEncoder,
    PassThroughFeatures,
    SpatialVideoProjection,
    TemporalModule,
    TextTokenLSTM,
)
from codaar.quantizer import CrossModalQuantizer, LookupOutput
from codaar.runtime.profiling import nvtx_range


@dataclass
class ModelOutput:
    loss: torch.Tensor  # scalar: the training objective
    losses: dict[str, torch.Tensor]  # "rec/<m>", "commit/<m>", "dqa", "cpc" (absent when cpc=False)
    metrics: dict[str, torch.Tensor]  # quantizer metrics + "cpc_acc/<target><-<context>", detached
    indices: dict[str, torch.Tensor]  # [B, T] code per frame, per modality


class CoDAARModel(nn.Module):
    """Encoders, cross-modal quantizer, CPC and decoders. `forward(batch)` is one pretraining step's loss.

    Batch keys: "audio" [B, T, d_a]; "video" [B, T, H, W, C] (spatial) or [B, T, d_v] (vector);
    "text" [B, T, d_text] token embeddings (the 10 tokens play the role of the T time steps).
    """

    def __init__(self, config: ModelConfig | None = None, **settings: object) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**settings)
        elif settings:
            config = config.replace(**settings)
        self.config = config
        cfg = config
        # Construction order follows the authors' (text LSTM, quantizer, encoders, CPC, decoders).
        self.text_lstm = TextTokenLSTM(cfg.text_dim, cfg.text_lstm_dim) if "text" in cfg.modalities else None
        self.quantizer = CrossModalQuantizer(cfg.quantizer)
        self.encoders = nn.ModuleDict({m: self._build_encoder(m) for m in cfg.modalities})
        self.cpc = (
            CrossModalCPC(
                cfg.modalities, cfg.dim, cfg.cpc_context_dim, cfg.cpc_layers, cfg.cpc_prediction_steps,
                cfg.cpc_variant, cfg.cpc_self_weight,
            )
            if cfg.cpc else None
        )
        self.decoders = nn.ModuleDict({m: self._build_decoder(m) for m in cfg.modalities})
        # CPC's t* on the device, for steps captured in a CUDA graph (see prepare_step)
        self.register_buffer("_cpc_t_star", torch.zeros((), dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------------------ building
    def _input_dim(self, modality: str) -> int:
        """Width of what the modality's encoder and decoder see per time step (text: the BiLSTM output)."""
        cfg = self.config
        return {"audio": cfg.audio_dim, "video": cfg.video_dim, "text": 2 * cfg.text_lstm_dim}[modality]

    def _temporal(self, in_dim: int) -> TemporalModule:
        cfg = self.config
        return TemporalModule(in_dim, cfg.dim, cfg.temporal_heads, cfg.temporal_ffn_dim, cfg.temporal_layers,
                              cfg.dropout)

    def _build_encoder(self, modality: str) -> ModalityEncoder:
        cfg = self.config
        in_dim = self._input_dim(modality)
        if modality == "video" and cfg.video_input == "spatial":
            return ModalityEncoder(
                ChannelGatedVideoFeatures(cfg.video_dim, cfg.video_gate_dim),
                SpatialVideoProjection(cfg.video_dim, cfg.video_hidden_channels, cfg.video_projection_channels),
                self._temporal(in_dim),
            )
        return ModalityEncoder(PassThroughFeatures(), LinearReLUProjection(in_dim, cfg.projection_dim),
                               self._temporal(in_dim))

    def _build_decoder(self, modality: str) -> nn.Module:
        cfg = self.config
        code_dim = len(cfg.modalities) * cfg.dim
        if modality == "video" and cfg.video_input == "spatial":
            return SpatialVideoDecoder(code_dim, cfg.dim, cfg.video_projection_channels, cfg.video_hidden_channels,
                                       cfg.video_dim)
        return VectorDecoder(code_dim, self._input_dim(modality), cfg.dim, cfg.projection_dim)

    # ------------------------------------------------------------------------------- forward
    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def _features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads (and the decoder reconstructs): the input, or for text the BiLSTM output."""
        return self.text_lstm(x) if modality == "text" else x

    def forward(
        self, batch: Mapping[str, torch.Tensor], *, cpc_generator: torch.Generator | None = None,
        cpc_t_star: torch.Tensor | None = None,
    ) -> ModelOutput:
        """One pretraining step's loss; in training mode the quantizer also updates its codebooks.

        cpc_generator: CPU generator for CPC's t* draw; None uses torch's global RNG (authors' code).
        cpc_t_star: a device tensor holding t* instead (fixed shapes: see `CrossModalCPC.forward`)."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(f"CoDAARModel: batch lacks {missing}; expected keys {list(self.modalities)}")
        reduction = self.quantizer.config.loss_reduction  # one switch for every squared error (spec §8.3)

        with nvtx_range("encoders"):
            targets = {m: self._features(m, batch[m]) for m in self.modalities}
            latents, projections = {}, {}
            for m in self.modalities:
                latents[m], projections[m] = self.encoders[m](targets[m])

        with nvtx_range("quantizer"):
            quantized = self.quantizer(latents)

        losses: dict[str, torch.Tensor] = {}
        metrics = dict(quantized.metrics)
        if self.cpc is not None:
            with nvtx_range("cpc"):
                cpc = self.cpc(latents, cpc_generator, cpc_t_star)  # continuous latents, not the codes (spec §4)
            metrics.update(cpc.accuracies)

        with nvtx_range("decoders"):
            for m in self.modalities:
                prediction = self.decoders[m](quantized.tri_code[m], projections[m])
                losses[f"rec/{m}"] = reconstruction_loss(prediction, targets[m], reduction)

        losses.update(quantized.losses)
        if self.cpc is not None:
            losses["cpc"] = cpc.loss
        total = sum(losses.values())
        return ModelOutput(loss=total, losses=losses, metrics=metrics, indices=quantized.indices)

    def prepare_step(self, steps: int, cpc_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The host-side work of a training step whose device work is captured in a CUDA graph (or
        runs with fixed shapes): draws CPC's t* as the ordinary step does and writes it to a device
        tensor, and prepares the quantizer's codebook update (which puts it in `capturable` mode).
        Returns the keyword inputs of `forward` for that step; call it before every step or replay."""
        self.quantizer.capturable = True
        self.quantizer.prepare_update()
        if self.cpc is None:
            return {}
        self._cpc_t_star.fill_(self.cpc.draw_t_star(steps, cpc_generator))
        return {"cpc_t_star": self._cpc_t_star}

    def graph_generators(self) -> list[torch.Generator]:
        """The generators a captured step draws from, to register with the graph (after prepare_step)."""
        return [self.quantizer.reset_rng]

    # ----------------------------------------------------------------------------- inference
    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Continuous latent z [B, T, D] of one modality (text: x are token embeddings)."""
        if modality not in self.encoders:
            raise KeyError(f"encode: unknown modality {modality!r}; expected one of {list(self.modalities)}")
        return self.encoders[modality](self._features(modality, x))[0]

    def codes(self, modality: str, x: torch.Tensor) -> LookupOutput:
        """Nearest codes of one modality's input in the frozen codebook (indices, own codeword, full row).

        The full row is the authors' downstream head input (spec §6.1). Never updates the codebook."""
        return self.quantizer.lookup(modality, self.encode(modality, x))
