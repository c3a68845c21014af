"""`ModelConfig`: every size and switch of the CoDAAR network, with its quantizer's config inside.

Defaults are the authors' AVT model (docs/method.md §3). The input sizes (`audio_dim`, `video_input`,
`video_dim`, `text_dim`) describe the features, so the trainer reads them from the data set; the
modalities, code size and count live in the quantizer's config (`config.quantizer`), and the
properties below only read them from there.
"""

from __future__ import annotations

from collections.abc import Mapping

from codaar.model.cpc import VARIANTS as CPC_VARIANTS
from codaar.quantizer_config import QuantizerConfig
from codaar.run_folder.checkpoint import CheckpointError
from codaar.settings import SettingsError, nested, setting, settings

KNOWN_MODALITIES = ("video", "audio", "text")
VIDEO_INPUTS = ("spatial", "vector")
CPC_VARIANT_OF_PRESET = {"official": "official", "paper": "paper", "recommended": "official"}  # docs/method.md §9.9


@settings
class ModelConfig:
    quantizer: QuantizerConfig = nested(QuantizerConfig, "the cross-modal quantizer")
    # inputs (read from the data by the trainer)
    audio_dim: int = setting(128, "d_a: audio features per step (VGGish: 128)", at_least=1, flag=False)
    video_input: str = setting("spatial", "spatial: [B, T, H, W, C] maps; vector: [B, T, d_v]", choices=VIDEO_INPUTS,
                               flag=False)
    video_dim: int = setting(512, "C of the spatial video map, or d_v of vector features", at_least=1, flag=False)
    text_dim: int = setting(768, "d_text of the token embeddings (BERT: 768)", at_least=1, flag=False)
    # encoders
    projection_dim: int = setting(256, "width of the input projections P_a, P_t and vector-video P_v", at_least=1)
    video_gate_dim: int = setting(64, "bottleneck of the spatial video channel gate (512 -> 64 -> 512)", at_least=1)
    video_hidden_channels: int = setting(1024, "first conv of the spatial P_v; the video decoder's hidden width",
                                         at_least=1)
    video_projection_channels: int = setting(2048, "output channels of the spatial P_v", at_least=1)
    text_lstm_dim: int = setting(128, "text BiLSTM width per direction (the text features are twice this)",
                                 at_least=1)
    temporal_heads: int = setting(4, "attention heads of the temporal transformers (must divide dim)", at_least=1)
    temporal_ffn_dim: int = setting(1024, "feed-forward width of the temporal transformer layers", at_least=1)
    temporal_layers: int = setting(2, "layers of each temporal transformer", at_least=1)
    dropout: float = setting(0.1, "dropout of the temporal transformers", at_least=0, below=1)
    # CPC
    cpc: bool = setting(True, "CPC loss (cross-modal predictive coding)")
    cpc_variant: str | None = setting(None, "official: the authors' CPC pairs (self pairs weighted); paper: cross "
                                      "pairs only (none: follows the preset)", choices=CPC_VARIANTS)
    cpc_context_dim: int = setting(256, "width of CPC's context LSTM", at_least=1)
    cpc_layers: int = setting(2, "layers of CPC's context LSTM", at_least=1)
    cpc_prediction_steps: int = setting(1, "H: steps CPC predicts ahead", at_least=1)
    cpc_self_weight: float = setting(0.1, "weight of CPC's self-modal pairs (official variant only)", at_least=0)

    def __post_init__(self) -> None:
        self.validate_fields()
        unknown = [m for m in self.modalities if m not in KNOWN_MODALITIES]
        if unknown:
            raise SettingsError("modalities", f"names from {', '.join(KNOWN_MODALITIES)}", ",".join(self.modalities))
        if self.cpc_variant is None:
            object.__setattr__(self, "cpc_variant", CPC_VARIANT_OF_PRESET[self.preset])
        if self.dim % self.temporal_heads:
            raise SettingsError("temporal_heads", f"a divisor of dim ({self.dim})", self.temporal_heads)

    # Read from the quantizer's config: declared there once.
    @property
    def modalities(self) -> tuple[str, ...]:
        return self.quantizer.modalities

    @property
    def dim(self) -> int:
        return self.quantizer.dim

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def preset(self) -> str:
        return self.quantizer.preset


def saved_model_config(meta: Mapping[str, object], where: str) -> ModelConfig:
    """The resolved model (input sizes from the data) of a checkpoint's meta.json.

    Checkpoints before nested settings (format version 1) stored a flat dictionary, the quantizer's
    extra settings under 'quantizer_overrides'; its names are today's flat names."""
    model = meta.get("model_config")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{where}: field 'model_config': expected the run's settings (a JSON object), found "
                              f"{type(model).__name__}")
    model = dict(model)
    model.update(model.pop("quantizer_overrides", None) or {})  # version 1
    try:
        return ModelConfig.from_dict(model)
    except SettingsError as exc:
        raise CheckpointError(f"{where}: {exc} (a checkpoint of another codaar version?)") from None
