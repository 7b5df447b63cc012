"""The code location: the domains under defs/, bound to resources from the environment."""

from __future__ import annotations

import dagster as dg

from droughtwatch_assets.defs.ingest.assets import ingest_assets, ingest_job
from droughtwatch_assets.defs.ingest.sensors import drop_sensor
from droughtwatch_assets.defs.resources import build_resources
from droughtwatch_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ingest_assets,
        jobs=[ingest_job],
        sensors=[drop_sensor],
        resources=build_resources(settings or Settings.from_env()),
    )


defs = build_definitions()
