"""The ingest job: raw shards to the lake, with their checks, for one shard or many."""

import dagster as dg

from droughtwatch_assets.defs.ingest.assets import KEYS
from droughtwatch_assets.defs.run_tags import run_tags

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*KEYS),
    description="raw_tfrecords -> filtered_images -> spectral_indices, with checks, for the "
    "shards of the run's partition (or partition range)",
    tags=run_tags("ingest"),
)
