"""Jobs of the training and registry domains."""

from typing import Any

import dagster as dg

from droughtwatch_assets.defs.run_tags import run_tags
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.settings import Settings

TRAINING_JOB = "training_job"


def build_training_job(settings: Settings) -> Any:
    """training_job, with the GPU request of the deployment's settings in its run tags."""
    return dg.define_asset_job(
        TRAINING_JOB,
        selection=dg.AssetSelection.assets(
            lake.TRAINING_CORPUS, lake.TRAINED_MODEL, lake.REGISTERED_MODEL, lake.SERVING_MODEL
        ),
        description="List the corpus, train one variant, register it, run the promotion gate, "
        "and record the model that now serves (serving_model).",
        tags=run_tags(
            "training",
            gpus=settings.training_gpus,
            ecs_capacity_provider=settings.ecs_gpu_capacity_provider,
        ),
    )
