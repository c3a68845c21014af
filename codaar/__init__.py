"""codaar: CoDAAR cross-modal discrete alignment and reconstruction."""

from codaar.quantizer import CrossModalQuantizer, LookupOutput, QuantizerOutput
from codaar.quantizer_config import PRESETS, QuantizerConfig

__all__ = ["PRESETS", "CrossModalQuantizer", "LookupOutput", "QuantizerConfig", "QuantizerOutput"]
