"""Helpers for the Dagster-layer tests: put shards in a data root and run the ingest job."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.settings import Settings


def put_sample(settings: Settings, key: str, sample_shard_path: Path) -> None:
    from droughtwatch_assets.storage import open_store

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
    from droughtwatch_assets.defs.ingest.sensors import drop_sensor

    defs = build_definitions(settings)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": defs.resources["storage"]}
    )
    result = drop_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result
