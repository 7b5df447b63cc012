"""The drop and rescore jobs: shards to predictions and monitoring rows, many per run."""

import dagster as dg

from droughtwatch_assets.defs.run_tags import run_tags
from droughtwatch_assets.pipeline import lake

drop_job = dg.define_asset_job(
    "drop_job",
    selection=dg.AssetSelection.assets(
        lake.RAW_TFRECORDS,
        lake.FILTERED_IMAGES,
        lake.SPECTRAL_INDICES,
        lake.BATCH_PREDICTIONS,
        lake.MONITORING_METRICS,
    ),
    description="Dropped shards end to end: ingest, the champion's predictions, monitoring.",
    tags=run_tags("inference"),
)
rescore_job = dg.define_asset_job(
    "rescore_job",
    selection=dg.AssetSelection.assets(lake.BATCH_PREDICTIONS, lake.MONITORING_METRICS),
    description="Score already-ingested shards again (with today's champion): an explicit "
    "backfill, never triggered by a promotion.",
    tags=run_tags("inference"),
)
