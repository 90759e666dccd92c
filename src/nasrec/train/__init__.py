"""Training: optimisation steps and helpers shared by supernet and standalone training."""
