"""Names a package exports but imports on first use, so that importing the package stays cheap
(`python -m codaar.data` without torch; checkpoint readers without the training loop)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `names[name]` (a module path) when `name` is first used."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
