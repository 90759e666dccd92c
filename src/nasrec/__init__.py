"""nasrec: weight-sharing neural architecture search for CTR prediction models."""

from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"

# A library logs and lets the application choose where lines go: without a handler configured (the command
# line configures its own, `nasrec.console`) nothing is printed, not even warnings through logging's last resort.
logging.getLogger("nasrec").addHandler(logging.NullHandler())

_EXPORTS = ("BatchLoader", "PrepareConfig", "SynthConfig", "generate_synthetic", "open_cache", "prepare")
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import nasrec.data

        return getattr(nasrec.data, name)
    raise AttributeError(f"module 'nasrec' has no attribute {name!r}")
