"""nasrec: weight-sharing neural architecture search for CTR prediction models."""

__version__ = "0.1.0"

from nasrec.data import (  # the version must exist before submodules import it
    BatchLoader,
    PrepareConfig,
    SynthConfig,
    generate_synthetic,
    open_cache,
    prepare,
)

__all__ = ["BatchLoader", "PrepareConfig", "SynthConfig", "__version__", "generate_synthetic", "open_cache", "prepare"]
