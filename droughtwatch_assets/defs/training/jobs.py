"""Jobs of the training and registry domains."""

import dagster as dg

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("training_corpus", "trained_model", "registered_model"),
    description="List the corpus, train one variant, register it and run the promotion gate.",
)
