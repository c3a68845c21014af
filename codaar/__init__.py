"""codaar: CoDAAR cross-modal discrete alignment and reconstruction.

The quantizer's names are imported on first use, so `python -m codaar.data` does not pay for torch.
"""

from codaar.runtime.lazy import lazy_exports

_LAZY = {
    "CrossModalQuantizer": "codaar.quantizer",
    "LookupOutput": "codaar.quantizer",
    "QuantizerOutput": "codaar.quantizer",
    "QuantizerConfig": "codaar.quantizer_config",
    "PRESETS": "codaar.quantizer_config",
}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = sorted(_LAZY)
