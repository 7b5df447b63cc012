"""Helpers for the Dagster-layer tests: put shards in a data root and run the ingest job."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.settings import Settings


def put_sample(settings: Settings, key: str, sample_shard_path: Path) -> None:
    from droughtwatch_assets.adapters.storage import open_store

    open_store(settings.data_root, endpoint_url=settings.s3_endpoint_url).write_bytes(
        key, sample_shard_path.read_bytes()
    )


def copy_sample(data_root: Path, key: str, sample_shard_path: Path) -> Path:
    dest = data_root / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_shard_path, dest)
    return dest


def ingest(settings: Settings, instance: dg.DagsterInstance, key: str, **kwargs):
    """Add the partition and run the ingest job for it, as the sensor's run would."""
    if not instance.has_dynamic_partition("shards", key):
        instance.add_dynamic_partitions("shards", [key])
    job = build_definitions(settings).resolve_job_def("ingest_job")
    return job.execute_in_process(partition_key=key, instance=instance, **kwargs)


def tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None = None):
    """One evaluation of drop_sensor, then what the daemon does with its result: add the
    requested partitions (the caller runs the requests)."""
    from droughtwatch_assets.defs.ingest.sensors import build_drop_sensor

    defs = build_definitions(settings)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": defs.resources["storage"]}
    )
    result = build_drop_sensor(settings)(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requested_keys(instance: dg.DagsterInstance, request: dg.RunRequest) -> list[str]:
    """The shard partitions a run request covers: its partition key, or its partition range in
    the order the partitions were added."""
    if request.partition_key is not None:
        return [request.partition_key]
    start = request.tags["dagster/asset_partition_range_start"]
    end = request.tags["dagster/asset_partition_range_end"]
    order = instance.get_dynamic_partitions("shards")
    return order[order.index(start) : order.index(end) + 1]


def execute_request(settings: Settings, instance: dg.DagsterInstance, request: dg.RunRequest, **kw):
    """Run what a sensor's run request asks for, in-process, as the daemon would launch it."""
    job = build_definitions(settings).resolve_job_def(request.job_name)
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags={k: v for k, v in request.tags.items() if k != "dagster/partition"},
        raise_on_error=False,
        **kw,
    )
