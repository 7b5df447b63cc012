"""Monitoring: per-shard prediction and feature drift, stored in the metrics database."""
