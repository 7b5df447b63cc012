"""The ingest job: raw shards to the lake, with their checks, for one shard or many."""

from functools import cache
from typing import Any

import dagster as dg

from droughtwatch_assets.defs.ingest.assets import KEYS
from droughtwatch_assets.defs.run_tags import run_tags

INGEST_JOB = "ingest_job"


@cache  # one definition per image: the code location and the drop sensor share it
def build_ingest_job(worker_image: str | None = None) -> Any:
    """ingest_job; with `worker_image`, its runs ask the run launcher for that image."""
    return dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.assets(*KEYS),
        description="raw_tfrecords -> filtered_images -> spectral_indices, with checks, for the "
        "shards of the run's partition (or partition range)",
        tags=run_tags("ingest", image=worker_image),
    )
