"""Inference: the champion's predictions for each shard."""
