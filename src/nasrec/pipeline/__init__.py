"""One command from raw logs to a trained model: the pipeline configuration and its stages."""
