"""The drop sensor: new shards in the data root become partitions and batched runs."""

from collections.abc import Callable, Sequence

import dagster as dg

from droughtwatch_assets.adapters.notifications import QueueCursor, acknowledge, poll, sqs_client
from droughtwatch_assets.adapters.storage import ObjectInfo, S3Store, Store
from droughtwatch_assets.defs.inference.jobs import DROP_JOB, build_inference_jobs
from droughtwatch_assets.defs.ingest.jobs import INGEST_JOB, build_ingest_job
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import StorageResource
from droughtwatch_assets.pipeline import batching
from droughtwatch_assets.pipeline.discovery import (
    DROPS_PREFIX,
    DiscoveryCursor,
    Found,
    already_ingested_in,
    discover,
)
from droughtwatch_assets.runs import fail_orphaned_runs, partition_tags
from droughtwatch_assets.settings import Settings


def batch_requests(
    found: Sequence[Found],
    order: Sequence[str],
    *,
    max_per_run: int,
    parallel: int,
) -> list[dg.RunRequest]:
    """Run requests for the found shards: drops go to drop_job (ingest, predictions,
    monitoring), other shards to ingest_job; each job's shards in batches of partitions that are
    adjacent in `order` (see droughtwatch_assets.pipeline.batching). A lone new shard is a run
    of its own, requested at once: nothing waits for a batch to fill.

    Run keys name the batch's shards and versions, so a replayed tick asks for the same runs."""
    by_key = {f.key: f for f in found}
    requests = []
    for job_name in (DROP_JOB, INGEST_JOB):
        keys = [k for k in by_key if k.startswith(DROPS_PREFIX) == (job_name == DROP_JOB)]
        for batch in batching.contiguous_batches(
            keys, order, max_per_run=max_per_run, parallel=parallel
        ):
            shards_ = [by_key[k] for k in batch]
            tags = {"droughtwatch/shards": str(len(batch))}
            if len(batch) == 1:
                tags["droughtwatch/source_version"] = shards_[0].info.version
            if any(s.previous_version is not None for s in shards_):
                tags["droughtwatch/reupload"] = "true"
            run_key = (
                shards_[0].run_key
                if len(batch) == 1
                else batching.batch_id(job_name, [s.run_key for s in shards_])
            )
            requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    partition_key=batch[0] if len(batch) == 1 else None,
                    tags=tags if len(batch) == 1 else {**tags, **partition_tags(batch)},
                    job_name=job_name,
                )
            )
    return requests


# Dagster's sensor daemon looks every 5 s (its MIN_INTERVAL_LOOP_TIME) whether a sensor is due:
# due when its minimum interval has passed since its last tick started. Each look lands a little
# earlier or later in the loop than the one before (other sensors, the thread pool), so a 5 s
# interval looked at every 5 s was often "4.8 s, not yet" and ticked every 10 s (the daemon's
# log under `make bench-e2e`). The sensor asks Dagster for this much less than it was given.
TICK_JITTER_S = 1


def dagster_min_interval(interval_s: int) -> int:
    """The minimum_interval_seconds that makes the daemon tick every `interval_s` seconds (as
    close as its 5 s loop allows), never more often than every `interval_s - TICK_JITTER_S`."""
    return max(1, interval_s - TICK_JITTER_S)


def build_drop_sensor(settings: Settings) -> dg.SensorDefinition:
    """The drop sensor, ticking every DROUGHTWATCH_SENSOR_INTERVAL seconds (a drop waits half of
    it on average) and batching up to DROUGHTWATCH_SHARDS_PER_RUN shards per run."""

    @dg.sensor(
        jobs=[
            build_ingest_job(settings.worker_image),
            build_inference_jobs(settings.worker_image)[0],
        ],
        minimum_interval_seconds=dagster_min_interval(settings.sensor_interval_s),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Finds new or rewritten shards in the data root, by listing it "
        "incrementally (droughtwatch_assets.pipeline.discovery) or, with "
        "DROUGHTWATCH_SQS_QUEUE_URL, from its S3 event notifications "
        "(droughtwatch_assets.adapters.notifications), and requests runs of up to "
        "DROUGHTWATCH_SHARDS_PER_RUN shards each: drop_job (ingest, predictions, monitoring) "
        "for shards under drops/, ingest_job for others.",
    )
    def drop_sensor(
        context: dg.SensorEvaluationContext, storage: StorageResource
    ) -> dg.SensorResult:
        return evaluate(context, storage, settings)

    return drop_sensor


def evaluate(
    context: dg.SensorEvaluationContext, storage: StorageResource, settings: Settings
) -> dg.SensorResult:
    """One tick of the drop sensor."""
    for run_id in fail_orphaned_runs(context.instance):
        context.log.warning(f"run {run_id} lost the process executing it: marked failed")
    data_store = storage.data_store()
    already = already_ingested_in(storage.lake_store())
    if storage.sqs_queue_url:
        found, skipped, cursor, what = _from_queue(
            context, storage, data_store, already, settings.sensor_interval_s
        )
    else:
        result = discover(
            data_store, DiscoveryCursor.loads(context.cursor), already_ingested=already
        )
        found, cursor = result.found, result.cursor.dumps()
        skipped = [(data_store.url(key), reason) for key, reason in result.skipped]
        what = f"listed {result.listed} objects"
    for where, reason in skipped:
        context.log.info(f"skipping {where}: {reason}")
    for shard in found:
        if shard.previous_version is not None:
            context.log.info(
                f"{shard.key} was uploaded again with new content "
                f"({shard.previous_version} -> {shard.info.version}): processing it again"
            )
    existing = context.instance.get_dynamic_partitions(shards.name)
    known = set(existing)
    new_keys = sorted({f.key for f in found if f.key not in known})
    run_requests = batch_requests(
        found,
        [*existing, *new_keys],
        max_per_run=settings.shards_per_run,
        parallel=batching.default_parallelism(),
    )
    context.log.info(
        f"{what}: {len(found)} shards to ingest ({len(new_keys)} new partitions), "
        f"{len(skipped)} skipped, {len(run_requests)} runs requested"
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
    interval_s: int,
) -> tuple[list[Found], list[tuple[str, str]], str, str]:
    """One tick in notification mode: acknowledge the last committed tick's messages, then read
    what waits (see droughtwatch_assets.adapters.notifications for the rule)."""
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
    visibility = min(max(10 * interval_s, 300), 43200)
    polled = poll(
        sqs, queue_url, data_store, already_ingested=already, visibility_timeout_s=visibility
    )
    return (
        polled.found,
        polled.skipped,
        QueueCursor(polled.receipts).dumps(),
        f"read {polled.messages} messages from {queue_url}",
    )
