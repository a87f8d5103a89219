"""Pieces of train_imagenet.py and tools/validate.py: flags and YAML, data, model, evaluation, checkpoints."""
