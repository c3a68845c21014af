"""`python -m codaar.encode RUN --out CODES`: the discrete codes of a trained model for a data set.

Modules: `export` (`EncodeSettings`, `encode_dataset`: batches of clips -> `.npy` memory maps and a
manifest) and `__main__` (the command line). The Python API underneath is the model's own::

    model = CoDAARModel.from_checkpoint("runs/codaar")
    out = model.encode({"audio": audio, "video": video})  # {modality: LookupOutput}
    out["audio"].indices                                    # [B, T] code per second
"""

from codaar.runtime.lazy import lazy_exports

_LAZY = {
    "EncodeError": "codaar.encode.export",
    "EncodeSettings": "codaar.encode.export",
    "encode_dataset": "codaar.encode.export",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = sorted(_LAZY)
