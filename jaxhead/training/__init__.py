"""The stylization trainer: models, the pure train step, sharding, checkpoints, logging."""
