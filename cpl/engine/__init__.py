"""Training loop, checkpoints, feature extraction and distributed helpers."""
