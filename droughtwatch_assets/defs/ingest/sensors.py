"""The drop sensor: new shards in the data root become partitions and ingest runs."""

import json
from collections.abc import Callable

import dagster as dg

from droughtwatch_assets.defs.inference.jobs import DROPS_PREFIX, drop_job
from droughtwatch_assets.defs.ingest.assets import RAW, ingest_job
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import StorageResource, lake_key
from droughtwatch_assets.discovery import DiscoveryCursor, discover
from droughtwatch_assets.settings import Settings
from droughtwatch_assets.storage import ObjectInfo, Store


def ingested_version(lake: Store, key: str) -> str | None:
    """The source version that raw_tfrecords last validated for this shard, if any."""
    try:
        data = lake.read_bytes(lake_key(RAW, key, ".json"))
    except KeyError:
        return None
    return json.loads(data).get("source_version")


def already_ingested_in(lake: Store) -> Callable[[ObjectInfo], bool]:
    """Whether the lake already holds a raw_tfrecords report for exactly this version."""

    def check(info: ObjectInfo) -> bool:
        return ingested_version(lake, info.key) == info.version

    return check


# Seconds between ticks (DROUGHTWATCH_SENSOR_INTERVAL): a drop waits half of it on average.
SENSOR_INTERVAL_S = Settings.from_env().sensor_interval_s


@dg.sensor(
    jobs=[ingest_job, drop_job],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the data root incrementally (see droughtwatch_assets.discovery) and "
    "requests one run per new or rewritten shard: drop_job (ingest, predictions, monitoring) "
    "for shards under drops/, ingest_job for the others.",
)
def drop_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    data_store = storage.data_store()
    result = discover(
        data_store,
        DiscoveryCursor.loads(context.cursor),
        already_ingested=already_ingested_in(storage.lake_store()),
    )
    for key, reason in result.skipped:
        context.log.info(f"skipping {data_store.url(key)}: {reason}")
    run_requests = []
    for found in result.found:
        tags = {"droughtwatch/source_version": found.info.version}
        if found.previous_version is not None:
            tags["droughtwatch/reupload"] = "true"
            context.log.info(
                f"{found.key} was uploaded again with new content "
                f"({found.previous_version} -> {found.info.version}): processing it again"
            )
        job = drop_job if found.key.startswith(DROPS_PREFIX) else ingest_job
        run_requests.append(
            dg.RunRequest(
                run_key=found.run_key, partition_key=found.key, tags=tags, job_name=job.name
            )
        )
    new_keys = [
        f.key
        for f in result.found
        if not context.instance.has_dynamic_partition(shards.name, f.key)
    ]
    context.log.info(
        f"listed {result.listed} objects: {len(result.found)} shards to ingest "
        f"({len(new_keys)} new partitions), {len(result.skipped)} skipped"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[shards.build_add_request(new_keys)] if new_keys else [],
        cursor=result.cursor.dumps(),
    )
