"""Jobs of the training and registry domains."""

import dagster as dg

from droughtwatch_assets.defs.run_tags import run_tags
from droughtwatch_assets.settings import Settings

# Read when the code location loads: the GPU request is deployment configuration.
_settings = Settings.from_env()

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("training_corpus", "trained_model", "registered_model"),
    description="List the corpus, train one variant, register it and run the promotion gate.",
    tags=run_tags(
        "training",
        gpus=_settings.training_gpus,
        ecs_capacity_provider=_settings.ecs_gpu_capacity_provider,
    ),
)
