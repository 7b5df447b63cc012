"""The code location: the domains under defs/, bound to resources from the environment."""

from __future__ import annotations

import dagster as dg

from droughtwatch_assets.defs.inference.assets import batch_predictions
from droughtwatch_assets.defs.inference.jobs import drop_job, rescore_job
from droughtwatch_assets.defs.ingest.assets import ingest_assets, ingest_job
from droughtwatch_assets.defs.ingest.sensors import drop_sensor
from droughtwatch_assets.defs.monitoring.assets import monitoring_metrics
from droughtwatch_assets.defs.registry.assets import registered_model
from droughtwatch_assets.defs.resources import build_resources
from droughtwatch_assets.defs.training.assets import trained_model, training_corpus
from droughtwatch_assets.defs.training.jobs import training_job
from droughtwatch_assets.defs.training.schedules import baseline_daily, retrain_on_new_labels
from droughtwatch_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *ingest_assets,
            training_corpus,
            trained_model,
            registered_model,
            batch_predictions,
            monitoring_metrics,
        ],
        jobs=[ingest_job, training_job, drop_job, rescore_job],
        sensors=[drop_sensor, retrain_on_new_labels],
        schedules=[baseline_daily],
        resources=build_resources(settings or Settings.from_env()),
    )


defs = build_definitions()
