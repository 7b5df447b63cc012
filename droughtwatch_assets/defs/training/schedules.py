"""When training runs: a daily schedule for baseline, and a sensor on new labelled shards.

Both ask for the same run key, ``<variant>@<corpus fingerprint>``, and both skip when the corpus
fingerprint equals the one the variant's last training recorded: nothing changed, no retrain.
"""

import json
from typing import Any

import dagster as dg

from droughtwatch_assets.adapters.storage import ObjectNotFound, Store
from droughtwatch_assets.defs.resources import StorageResource
from droughtwatch_assets.pipeline.corpus import corpus_manifest
from droughtwatch_assets.pipeline.lake import TRAINED_MODEL, TRAINING_CORPUS, object_key

SCHEDULED_VARIANT = "baseline"


def last_trained_fingerprint(lake: Store, variant: str) -> str | None:
    try:
        data = lake.read_bytes(object_key(TRAINED_MODEL, variant))
    except ObjectNotFound:
        return None
    return json.loads(data).get("corpus_fingerprint")


def retrain_request(storage: StorageResource, variant: str) -> dg.RunRequest | dg.SkipReason:
    lake = storage.lake_store()
    manifest = corpus_manifest(lake)
    if not manifest.train or not manifest.val:
        return dg.SkipReason(
            f"no labelled corpus yet ({len(manifest.train)} train, {len(manifest.val)} val shards)"
        )
    if last_trained_fingerprint(lake, variant) == manifest.fingerprint:
        return dg.SkipReason(
            f"{variant}: no labelled shard changed since its last training "
            f"(corpus {manifest.fingerprint})"
        )
    return dg.RunRequest(
        run_key=f"{variant}@{manifest.fingerprint}",
        partition_key=variant,
        tags={"droughtwatch/corpus": manifest.fingerprint},
    )


def build_training_triggers(
    training_job: Any,
) -> tuple[dg.ScheduleDefinition, dg.SensorDefinition]:
    """The daily schedule and the new-labels sensor, both requesting `training_job` runs."""

    @dg.schedule(
        job=training_job,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrains baseline every day at 03:00 UTC, as the earlier project did, "
        "unless no labelled shard changed since its last training.",
    )
    def baseline_daily(context: dg.ScheduleEvaluationContext, storage: StorageResource):
        return retrain_request(storage, SCHEDULED_VARIANT)

    @dg.asset_sensor(
        asset_key=dg.AssetKey(TRAINING_CORPUS),
        job=training_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When training_corpus (kept current by declarative automation) lists a "
        "changed set of labelled shards, retrains baseline.",
    )
    def retrain_on_new_labels(
        context: dg.SensorEvaluationContext, asset_event, storage: StorageResource
    ):
        return retrain_request(storage, SCHEDULED_VARIANT)

    return baseline_daily, retrain_on_new_labels
