"""CoDAARModel: encoders -> cross-modal quantizer -> CPC + decoders, one pretraining step (docs/method.md §4.13).

loss = sum_m rec/<m> + sum_m commit/<m> + dqa + cpc      (paper Eq. 10, docs/method.md §4.13 step 5)

The quantizer (codebooks, DTA, CSA, DQA, commitment, straight-through codes) is
`codaar.quantizer.CrossModalQuantizer`, used as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from codaar.model.config import ModelConfig, saved_model_config
from codaar.model.cpc import CPCOutput, CrossModalCPC
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
from codaar.quantizer import DEFAULTED_BUFFERS, CrossModalQuantizer, LookupOutput, QuantizerOutput
from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.checkpoint import CheckpointError
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
    "text" [B, T, d_text] token embeddings (the 10 tokens play the role of the T time steps);
    optional "text_mask" [B, T] bool (True = a real token, real tokens first: per-clip captions).

    With a text mask, the text BiLSTM, the text encoder's transformer, CPC and the text
    reconstruction loss ignore padded steps; the quantizer (commitment, DTA, DQA) and the decoders
    still see all T steps, so padded steps get codes too. An all-True mask (class prompts) changes
    no bit of any output or gradient.

    Inference: `from_checkpoint(path)`, then `encode({modality: features}, text_mask)` gives each
    modality's codes; `latents` and `codes` work on one modality.
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
    def defaulted_state_keys(self) -> tuple[str, ...]:
        """State-dict names an older checkpoint may lack: the quantizer's newer buffers, which load
        as defaults (`CrossModalQuantizer._load_from_state_dict`)."""
        return tuple(f"quantizer.{name}" for name in DEFAULTED_BUFFERS)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def _features(self, modality: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the encoder reads (and the decoder reconstructs): the input, or for text the BiLSTM output."""
        return self.text_lstm(x, mask) if modality == "text" else x

    def _encode(self, modality: str, features: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent z [B, T, D], projection P_m) of the encoder's input; mask: the real steps or None."""
        return self.encoders[modality](features, None if mask is None else ~mask)

    def _masks(self, text_mask: torch.Tensor | None, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{modality: [B, T] bool} of the modalities with padded steps (text, when a mask is given)."""
        if text_mask is None or "text" not in self.modalities:
            return {}
        text = batch["text"]
        if text_mask.dtype != torch.bool or tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text_mask must be a bool tensor [B, T] = {list(text.shape[:2])} (True = a real token), "
                             f"got {text_mask.dtype} {list(text_mask.shape)}")
        return {"text": text_mask}

    # The three regions `--compile` compiles (codaar/model/compiled.py); the quantizer between them
    # stays eager (docs/design.md §9.1).
    def _run_encoders(self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(reconstruction targets, latents z [B, T, D], projections P_m) of every modality."""
        targets = {m: self._features(m, inputs[m], masks.get(m)) for m in self.modalities}
        latents, projections = {}, {}
        for m in self.modalities:
            latents[m], projections[m] = self._encode(m, targets[m], masks.get(m))
        return targets, latents, projections

    def _run_cpc(self, latents: Mapping[str, torch.Tensor], t_star: int | torch.Tensor,
                 masks: Mapping[str, torch.Tensor]) -> CPCOutput:
        return self.cpc(latents, None, t_star, masks)

    def _run_decoders(self, codes: Mapping[str, torch.Tensor], projections: Mapping[str, torch.Tensor],
                      targets: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                      ) -> dict[str, torch.Tensor]:
        """{"rec/<m>": reconstruction loss} of every modality's decoder."""
        reduction = self.quantizer.config.loss_reduction  # one switch for every squared error (docs/method.md §9.3)
        return {f"rec/{m}": reconstruction_loss(self.decoders[m](codes[m], projections[m]), targets[m], reduction,
                                                masks.get(m))
                for m in self.modalities}

    def _quantize(self, latents: Mapping[str, torch.Tensor]) -> QuantizerOutput:
        """The quantizer outside autocast, in its codebook's precision (as vector-quantize-pytorch runs
        it): distances, DQA's scores, DTA and the losses never in bf16 (docs/design.md §9.2)."""
        dtype = self.quantizer.codebook.dtype
        with torch.autocast(latents[self.modalities[0]].device.type, enabled=False):
            return self.quantizer({m: z.to(dtype) for m, z in latents.items()})

    @property
    def compiled(self) -> bool:
        """Whether `codaar.model.compiled.compile_regions` compiled the encoders, CPC and decoders."""
        return "_run_encoders" in self.__dict__

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
        masks = self._masks(batch.get("text_mask"), batch)

        with nvtx_range("encoders"):
            targets, latents, projections = self._run_encoders({m: batch[m] for m in self.modalities}, masks)

        with nvtx_range("quantizer"):
            quantized = self._quantize(latents)

        losses: dict[str, torch.Tensor] = {}
        metrics = dict(quantized.metrics)
        if self.cpc is not None:
            t_star = cpc_t_star
            if t_star is None:
                t_star = self.cpc.draw_t_star(latents[self.modalities[0]].shape[1], cpc_generator)
                if self.compiled:  # a device t*: one graph serves every t* (CrossModalCPC.forward)
                    t_star = self._cpc_t_star.fill_(t_star)
            with nvtx_range("cpc"):
                cpc = self._run_cpc(latents, t_star, masks)  # not the codes (docs/method.md §5)
            metrics.update(cpc.accuracies)

        with nvtx_range("decoders"):
            losses.update(self._run_decoders(quantized.tri_code, projections, targets, masks))

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
    @classmethod
    def from_checkpoint(cls, path: str | Path) -> CoDAARModel:
        """The model of a run folder (its newest checkpoint) or a checkpoint folder, verified against
        its recorded SHA-256, on the CPU in float32, frozen and in eval mode. Raises CheckpointError
        naming the file and the problem (`codaar.pretrained.load_pretrained` also returns the
        checkpoint's metadata and the run's settings)."""
        tensors, meta = ckpt.load_checkpoint(Path(path))
        return cls.from_saved(tensors, meta, ckpt.resolve_checkpoint(Path(path)))

    @classmethod
    def from_saved(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, object], folder: Path) -> CoDAARModel:
        """The model of a checkpoint's tensors and meta.json, as `codaar.run_folder.checkpoint.
        load_checkpoint` read them from `folder`: on the CPU in float32, frozen and in eval mode. Raises
        CheckpointError when the weights are not finite or are not exactly the names, shapes and dtypes
        of the model the settings in meta.json describe (in the run's precision)."""
        config = saved_model_config(meta, str(folder / ckpt.META))
        weights = ckpt.prefixed(tensors, "model")
        broken = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if broken:
            raise CheckpointError(f"{folder / ckpt.TENSORS}: non-finite values in {', '.join(broken[:5])}"
                                  f"{' and more' if len(broken) > 5 else ''} (the run diverged); use an earlier "
                                  f"checkpoint")
        try:
            model = cls(config).to(ckpt.model_dtype(meta))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{folder / ckpt.META}: field 'model_config' describes no model ({exc})") from None
        ckpt.check_tensors(weights, model.state_dict(), folder / ckpt.TENSORS,  # refused, never converted
                           model.defaulted_state_keys())
        try:
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
        return model

    def input_shape(self, modality: str) -> tuple[int | None, ...]:
        """The shape of one time step of `modality`'s input (None: any size)."""
        cfg = self.config
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; this model has {list(self.modalities)}")
        if modality == "video":
            return (None, None, cfg.video_dim) if cfg.video_input == "spatial" else (cfg.video_dim,)
        return (cfg.audio_dim,) if modality == "audio" else (cfg.text_dim,)

    def latents(self, modality: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous latent z [B, T, D] of one modality (text: x are token embeddings, mask [B, T]
        their real tokens or None), in the model's current mode."""
        if modality not in self.encoders:
            raise KeyError(f"latents: unknown modality {modality!r}; expected one of {list(self.modalities)}")
        mask = mask if modality == "text" else None
        return self._encode(modality, self._features(modality, x, mask), mask)[0]

    def codes(self, modality: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> LookupOutput:
        """Nearest codes of one modality's input in the frozen codebook (indices, own codeword, full row).

        The full row is the authors' downstream head input (docs/method.md §7.1). Never updates the codebook."""
        return self.quantizer.lookup(modality, self.latents(modality, x, mask))

    @torch.no_grad()
    def encode(self, features: Mapping[str, torch.Tensor], text_mask: torch.Tensor | None = None,
               ) -> dict[str, LookupOutput]:
        """The discrete codes of a batch: {modality: features [B, T, ...]} -> {modality: LookupOutput}
        with `.indices` [B, T] (the code per step), `.codes` [B, T, D] (the quantized vectors) and
        `.rows` [B, T, M*D] (the full codebook rows at those indices).

        Runs in eval mode (restored afterwards) without gradients, never touches the codebooks.
        text_mask [B, T] bool: the real tokens of per-clip text (None: all real); padded steps get
        codes too. Inputs are checked: a wrong modality, shape or mask raises ValueError."""
        masks = self._check_inputs(features, text_mask)
        was_training = self.training
        self.eval()
        try:
            return {m: self.codes(m, x, masks.get(m)) for m, x in features.items()}
        finally:
            self.train(was_training)

    def _check_inputs(self, features: Mapping[str, torch.Tensor], text_mask: torch.Tensor | None,
                      ) -> dict[str, torch.Tensor]:
        unknown = [m for m in features if m not in self.modalities]
        if unknown or not features:
            raise ValueError(f"encode: expected features of the model's modalities {list(self.modalities)}, "
                             f"found {list(features)}")
        lead = None
        for m, x in features.items():
            want = self.input_shape(m)
            fits = x.dim() == 2 + len(want) and all(w is None or w == n for w, n in zip(want, x.shape[2:]))
            if not fits or not x.is_floating_point():
                shape = ", ".join("*" if w is None else str(w) for w in want)
                raise ValueError(f"encode: '{m}' features: expected a float tensor [B, T, {shape}], found "
                                 f"{x.dtype} {list(x.shape)}")
            if lead is not None and tuple(x.shape[:2]) != lead:
                raise ValueError(f"encode: '{m}' features: expected the same [B, T] as the other modalities "
                                 f"{list(lead)}, found {list(x.shape[:2])}")
            lead = tuple(x.shape[:2])
        if text_mask is None or "text" not in features:
            return {}
        masks = self._masks(text_mask, features)
        if not bool(text_mask[:, 0].all()) or bool((text_mask[:, 1:] & ~text_mask[:, :-1]).any()):
            raise ValueError("encode: text_mask: expected real tokens first (True) then padding (False), at least "
                             "one real token per clip")
        return masks
