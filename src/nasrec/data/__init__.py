"""Data layer: raw click logs -> columnar cache -> batches."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# Resolved on first use, so that `nasrec prepare` does not pay for importing torch.
_EXPORTS = {
    "Batch": "nasrec.data.loader",
    "BatchLoader": "nasrec.data.loader",
    "Cache": "nasrec.data.cache",
    "open_cache": "nasrec.data.cache",
    "PrepareConfig": "nasrec.data.prepare",
    "PrepareResult": "nasrec.data.prepare",
    "prepare": "nasrec.data.prepare",
    "SynthConfig": "nasrec.data.synthetic",
    "SynthResult": "nasrec.data.synthetic",
    "generate_synthetic": "nasrec.data.synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nasrec.data' has no attribute {name!r}")


class _DataPackage(types.ModuleType):
    """The package, keeping an exported function whose name is also a submodule's (`prepare`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing nasrec.data.prepare binds the package's "prepare" to that submodule, which would
        # hide the function of the same name from `from nasrec.data import prepare`.
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _DataPackage
