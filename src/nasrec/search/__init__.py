"""Architecture search: supernet scoring, regularized evolution and random search, top-k retraining."""
