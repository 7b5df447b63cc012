"""The drop sensor: new shards in the data root become partitions and ingest runs."""

import json
from collections.abc import Callable

import dagster as dg

from droughtwatch_assets.defs.inference.jobs import DROPS_PREFIX, drop_job
from droughtwatch_assets.defs.ingest.assets import RAW, ingest_job
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import StorageResource, lake_key
from droughtwatch_assets.discovery import DiscoveryCursor, Found, discover
from droughtwatch_assets.notifications import QueueCursor, acknowledge, poll, sqs_client
from droughtwatch_assets.settings import Settings
from droughtwatch_assets.storage import ObjectInfo, S3Store, Store


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
    description="Finds new or rewritten shards in the data root, by listing it incrementally "
    "(droughtwatch_assets.discovery) or, with DROUGHTWATCH_SQS_QUEUE_URL, from its S3 event "
    "notifications (droughtwatch_assets.notifications), and requests one run per shard: "
    "drop_job (ingest, predictions, monitoring) for shards under drops/, ingest_job for others.",
)
def drop_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    data_store = storage.data_store()
    already = already_ingested_in(storage.lake_store())
    if storage.sqs_queue_url:
        found, skipped, cursor, what = _from_queue(context, storage, data_store, already)
    else:
        result = discover(
            data_store, DiscoveryCursor.loads(context.cursor), already_ingested=already
        )
        found, cursor = result.found, result.cursor.dumps()
        skipped = [(data_store.url(key), reason) for key, reason in result.skipped]
        what = f"listed {result.listed} objects"
    for where, reason in skipped:
        context.log.info(f"skipping {where}: {reason}")
    run_requests = []
    for shard in found:
        tags = {"droughtwatch/source_version": shard.info.version}
        if shard.previous_version is not None:
            tags["droughtwatch/reupload"] = "true"
            context.log.info(
                f"{shard.key} was uploaded again with new content "
                f"({shard.previous_version} -> {shard.info.version}): processing it again"
            )
        job = drop_job if shard.key.startswith(DROPS_PREFIX) else ingest_job
        run_requests.append(
            dg.RunRequest(
                run_key=shard.run_key, partition_key=shard.key, tags=tags, job_name=job.name
            )
        )
    new_keys = list(
        dict.fromkeys(
            f.key for f in found if not context.instance.has_dynamic_partition(shards.name, f.key)
        )
    )
    context.log.info(
        f"{what}: {len(found)} shards to ingest "
        f"({len(new_keys)} new partitions), {len(skipped)} skipped"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[shards.build_add_request(new_keys)] if new_keys else [],
        cursor=cursor,
    )


def _from_queue(
    context: dg.SensorEvaluationContext,
    storage: StorageResource,
    data_store: Store,
    already: Callable[[ObjectInfo], bool],
) -> tuple[list[Found], list[tuple[str, str]], str, str]:
    """One tick in notification mode: acknowledge the last committed tick's messages, then read
    what waits (see droughtwatch_assets.notifications for the rule)."""
    queue_url = storage.sqs_queue_url
    assert queue_url
    if not isinstance(data_store, S3Store):
        raise dg.Failure(
            f"DROUGHTWATCH_SQS_QUEUE_URL is set but the data root {storage.data_root!r} is not "
            "in S3: S3 event notifications need an s3:// data root (unset the queue URL to list "
            "a local folder)"
        )
    sqs = sqs_client(queue_url)
    # The cursor was saved, so the tick that received these was committed: delete them now.
    errors = acknowledge(sqs, queue_url, QueueCursor.loads(context.cursor).pending)
    for error in errors:
        context.log.warning(f"could not delete an acknowledged message ({error}); it may return")
    # Invisible for several ticks, so the next tick deletes them before anyone sees them again.
    visibility = min(max(10 * SENSOR_INTERVAL_S, 300), 43200)
    polled = poll(
        sqs, queue_url, data_store, already_ingested=already, visibility_timeout_s=visibility
    )
    return (
        polled.found,
        polled.skipped,
        QueueCursor(polled.receipts).dumps(),
        f"read {polled.messages} messages from {queue_url}",
    )
