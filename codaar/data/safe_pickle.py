"""Load the authors' pickled numpy arrays without letting a pickle run code (docs/method.md §2.6).

Unpickling executes whatever callables the pickle names. `SafeArrayUnpickler` resolves only
the handful of numpy names that array and dtype pickles use (for numpy 1.x ``numpy.core`` and
numpy 2.x ``numpy._core`` spellings alike) and refuses every other global, so a malicious file
fails with `DataFormatError` naming it before anything from it runs.
"""

from __future__ import annotations

import importlib
import io
import pickle

import numpy as np

from .errors import DataFormatError

# (module suffix after "numpy.core"/"numpy._core", name)
_CORE_ALLOWED = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ for protocols <= 4
    ("multiarray", "scalar"),  # numpy scalars (np.float32(1.0))
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ for protocol 5 (pickle5, as the authors used)
}
_TOP_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")}
# Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"): a pure data transformation.
_CODECS_ALLOWED = {("_codecs", "encode")}
_CORE_NAME = "numpy._core" if hasattr(np, "_core") else "numpy.core"


class SafeArrayUnpickler(pickle.Unpickler):
    """An Unpickler that builds numpy arrays and dtypes and nothing else."""

    def __init__(self, file, source: str = "<bytes>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        for prefix in ("numpy._core.", "numpy.core."):
            if module.startswith(prefix) and (module[len(prefix):], name) in _CORE_ALLOWED:
                # Map either spelling to the installed numpy's module (cross-version pickles).
                return getattr(importlib.import_module(f"{_CORE_NAME}.{module[len(prefix):]}"), name)
        if (module, name) in _TOP_ALLOWED:
            return getattr(np, name)
        if (module, name) in _CODECS_ALLOWED:
            import _codecs

            return _codecs.encode
        raise DataFormatError(self.source, "pickle global", "only numpy array/dtype reconstruction",
                              f"{module}.{name}", hint="refused by the allow-list unpickler; nothing was executed")

    def persistent_load(self, pid):
        raise DataFormatError(self.source, "pickle persistent id", "no persistent ids", repr(pid)[:80])


def load_array(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Unpickle ``data`` that must hold one numeric numpy array; ``source`` names it in errors."""
    try:
        obj = SafeArrayUnpickler(io.BytesIO(data), source).load()
    except DataFormatError:
        raise
    except Exception as exc:  # truncated or garbled pickles raise many different types
        raise DataFormatError(source, "pickle", "a pickled numpy array",
                              f"unreadable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, np.ndarray):
        raise DataFormatError(source, "pickle", "a numpy array", type(obj).__name__)
    if obj.dtype.kind not in "fiub":
        raise DataFormatError(source, "pickle", "a numeric array", f"dtype {obj.dtype}")
    return obj
