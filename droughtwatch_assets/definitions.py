"""The code location: the domains under defs/, bound to resources from the environment.

The environment is read here, once, when the code location loads (``Settings.from_env()``);
``build_definitions(settings)`` builds everything that depends on it (resources, the drop
sensor's interval and batch size, training's GPU run tags, the image of ingest and
inference runs) from the Settings it is given."""

from __future__ import annotations

import warnings

import dagster as dg

from droughtwatch_assets.defs.alerts import build_check_alerts, run_failure_alert
from droughtwatch_assets.defs.inference.jobs import build_inference_jobs
from droughtwatch_assets.defs.ingest.jobs import build_ingest_job
from droughtwatch_assets.defs.ingest.sensors import build_drop_sensor
from droughtwatch_assets.defs.monitoring.assets import drift_by_drop_date
from droughtwatch_assets.defs.registry.assets import registered_model, serving_model
from droughtwatch_assets.defs.resources import build_resources
from droughtwatch_assets.defs.shards import build_shard_assets
from droughtwatch_assets.defs.training.assets import trained_model, training_corpus
from droughtwatch_assets.defs.training.jobs import build_training_job
from droughtwatch_assets.defs.training.schedules import build_training_triggers
from droughtwatch_assets.settings import Settings

# Who answers for each group's assets: shown on every asset's page and in the catalog, and what
# `owner:` selections match.
OWNERS = {
    "ingest": "team:data-engineering",
    "training": "team:ml",
    "registry": "team:ml",
    "inference": "team:ml",
    "monitoring": "team:ml",
}


def _owned_and_linked(assets: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Each asset with its group's owner and a reference to the code that defines it."""
    owned = dg.map_asset_specs(
        lambda spec: spec.replace_attributes(owners=[OWNERS[spec.group_name]]), assets
    )
    with warnings.catch_warnings():
        # Code references are a beta feature of Dagster 1.13; the warning would print on every
        # command that loads the code location.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return list(dg.with_source_code_references(owned))


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    training_job = build_training_job(settings)
    baseline_daily, retrain_on_new_labels = build_training_triggers(training_job)
    assets = _owned_and_linked(
        [
            build_shard_assets(),
            training_corpus,
            trained_model,
            registered_model,
            serving_model,
            drift_by_drop_date,
        ]
    )
    checks = sorted({key for a in assets for key in a.check_keys}, key=str)
    return dg.Definitions(
        assets=assets,
        # Ingest and inference runs never import TensorFlow: with DROUGHTWATCH_WORKER_IMAGE they
        # ask the run launcher for that (smaller) image; training keeps the location's own.
        jobs=[
            build_ingest_job(settings.worker_image),
            training_job,
            *build_inference_jobs(settings.worker_image),
        ],
        sensors=[
            build_drop_sensor(settings),
            retrain_on_new_labels,
            # Evaluates training_corpus's automation condition; running from the start, as the
            # drop sensor and the schedules are (Dagster's implicit one starts stopped).
            dg.AutomationConditionSensorDefinition(
                "default_automation_condition_sensor",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
            ),
            run_failure_alert,
            build_check_alerts(checks, settings.sensor_interval_s),
        ],
        schedules=[baseline_daily],
        resources=build_resources(settings),
        # Every step of a run in the run's own process: a shard batch is one step, and a second
        # process per step would import the code location again for nothing.
        executor=dg.in_process_executor,
    )


# What the module-level code location was built with: the run engine (runs.py) rebuilds it when
# a process's environment has moved on (tests and benchmarks switch homes in one process).
SETTINGS = Settings.from_env()
defs = build_definitions(SETTINGS)
