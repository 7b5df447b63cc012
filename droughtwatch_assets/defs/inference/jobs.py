"""The drop and rescore jobs: shards to predictions and monitoring rows, many per run."""

from functools import cache
from typing import Any

import dagster as dg

from droughtwatch_assets.defs.run_tags import run_tags
from droughtwatch_assets.pipeline import lake

DROP_JOB = "drop_job"


@cache  # one definition per image: the code location and the drop sensor share them
def build_inference_jobs(
    worker_image: str | None = None,
) -> tuple[Any, ...]:
    """drop_job, rescore_job and drift_summary_job; with `worker_image`, their runs ask the run
    launcher for that image (one built without TensorFlow: none of their steps imports it)."""
    tags = run_tags("inference", image=worker_image)
    drop_job = dg.define_asset_job(
        DROP_JOB,
        selection=dg.AssetSelection.assets(
            lake.RAW_TFRECORDS,
            lake.FILTERED_IMAGES,
            lake.SPECTRAL_INDICES,
            lake.BATCH_PREDICTIONS,
            lake.MONITORING_METRICS,
        ),
        description="Dropped shards end to end: ingest, the champion's predictions, monitoring.",
        tags=tags,
    )
    rescore_job = dg.define_asset_job(
        "rescore_job",
        selection=dg.AssetSelection.assets(lake.BATCH_PREDICTIONS, lake.MONITORING_METRICS),
        description="Score already-ingested shards again (with today's champion): an explicit "
        "backfill, never triggered by a promotion.",
        tags=tags,
    )
    # Unpartitioned, so not part of the shard jobs (whose op reports per-shard materializations
    # and would skip a downstream step): automation refreshes it under a daemon, the CLI after
    # scoring.
    drift_summary_job = dg.define_asset_job(
        "drift_summary_job",
        selection=dg.AssetSelection.assets(lake.DRIFT_BY_DROP_DATE),
        description="Refresh drift_by_drop_date from the monitoring table.",
        tags=tags,
    )
    return drop_job, rescore_job, drift_summary_job
