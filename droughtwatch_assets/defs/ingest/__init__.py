"""Ingest: raw shards -> filtered images -> spectral indices, and the drop sensor."""
