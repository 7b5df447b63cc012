"""The data path without Dagster: core's pure functions applied to stores.

The lake's layout and encodings, one shard's ingest, discovery of new shards, batching shards into
runs, the training corpus and the monitoring references. The assets in ``defs/`` and the CLI call
these; nothing here imports Dagster.
"""
