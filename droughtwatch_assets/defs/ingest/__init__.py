"""Ingest: raw shards -> filtered images -> spectral indices, and the sensor that finds new shards."""
