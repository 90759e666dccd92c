"""nasrec: weight-sharing neural architecture search for CTR prediction models."""

__version__ = "0.1.0"
