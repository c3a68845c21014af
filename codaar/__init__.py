"""codaar: CoDAAR cross-modal discrete alignment and reconstruction.

The quantizer's names are imported on first use, so `python -m codaar.data` does not pay for torch.
"""

_LAZY = {
    "CrossModalQuantizer": "codaar.quantizer",
    "LookupOutput": "codaar.quantizer",
    "QuantizerOutput": "codaar.quantizer",
    "QuantizerConfig": "codaar.quantizer_config",
    "PRESETS": "codaar.quantizer_config",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codaar' has no attribute {name!r}")


__all__ = sorted(_LAZY)
