"""The CoDAAR network: encoders, decoders, CPC, and the model that ties them to the quantizer."""

from codaar.model.codaar_model import CoDAARModel, ModelOutput
from codaar.model.compiled import CompileError, accelerate
from codaar.model.config import ModelConfig
from codaar.model.cpc import CPCOutput, CrossModalCPC, cpc_loss, cpc_pairs
from codaar.model.decoders import (
    CodeProjection,
    ResidualBlock,
    SpatialVideoDecoder,
    VectorDecoder,
    reconstruction_loss,
)
from codaar.model.encoders import (
    ChannelGatedVideoFeatures,
    LinearReLUProjection,
    ModalityEncoder,
    PassThroughFeatures,
    SpatialVideoProjection,
    TemporalModule,
    TextTokenLSTM,
)

__all__ = [
    "CPCOutput",
    "ChannelGatedVideoFeatures",
    "CoDAARModel",
    "CodeProjection",
    "CompileError",
    "CrossModalCPC",
    "LinearReLUProjection",
    "ModalityEncoder",
    "ModelConfig",
    "ModelOutput",
    "PassThroughFeatures",
    "ResidualBlock",
    "SpatialVideoDecoder",
    "SpatialVideoProjection",
    "TemporalModule",
    "TextTokenLSTM",
    "VectorDecoder",
    "accelerate",
    "cpc_loss",
    "cpc_pairs",
    "reconstruction_loss",
]
