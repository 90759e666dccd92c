"""nasrec: weight-sharing neural architecture search for CTR prediction models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = ("BatchLoader", "PrepareConfig", "SynthConfig", "generate_synthetic", "open_cache", "prepare")
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import nasrec.data

        return getattr(nasrec.data, name)
    raise AttributeError(f"module 'nasrec' has no attribute {name!r}")
