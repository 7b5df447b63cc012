"""Partition definitions shared by the assets, checks and sensors."""

from __future__ import annotations

import dagster as dg

from droughtwatch_assets.core.variants import VARIANTS

# One partition per raw shard, keyed by its path relative to the data root,
# e.g. "train/part-r-00000" or "drops/2024-08-07/part-r-00000"
# (droughtwatch_assets.pipeline.discovery.validate_shard_key says which keys are allowed).
shards = dg.DynamicPartitionsDefinition(name="shards")

# One partition per model variant (droughtwatch_assets.core.variants.VARIANTS): one asset per
# concept in the UI, a partition per variant.
variants = dg.StaticPartitionsDefinition(list(VARIANTS))
