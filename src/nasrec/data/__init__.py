"""Data layer: raw click logs -> columnar cache -> batches."""

from nasrec.data.cache import Cache, open_cache
from nasrec.data.loader import Batch, BatchLoader
from nasrec.data.prepare import PrepareConfig, PrepareResult, prepare
from nasrec.data.synthetic import SynthConfig, SynthResult, generate_synthetic

__all__ = [
    "Batch",
    "BatchLoader",
    "Cache",
    "PrepareConfig",
    "PrepareResult",
    "SynthConfig",
    "SynthResult",
    "generate_synthetic",
    "open_cache",
    "prepare",
]
