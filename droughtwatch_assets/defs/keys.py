"""The asset keys the domains under ``defs/`` refer to, named once (from the lake's asset names),
so that no domain imports another's module for a constant."""

import dagster as dg

from droughtwatch_assets.pipeline import lake

RAW = dg.AssetKey(lake.RAW_TFRECORDS)
FILTERED = dg.AssetKey(lake.FILTERED_IMAGES)
INDICES = dg.AssetKey(lake.SPECTRAL_INDICES)
PREDICTIONS = dg.AssetKey(lake.BATCH_PREDICTIONS)
MONITORING = dg.AssetKey(lake.MONITORING_METRICS)
TRAINING_CORPUS = dg.AssetKey(lake.TRAINING_CORPUS)
TRAINED_MODEL = dg.AssetKey(lake.TRAINED_MODEL)
REGISTERED_MODEL = dg.AssetKey(lake.REGISTERED_MODEL)
SERVING_MODEL = dg.AssetKey(lake.SERVING_MODEL)
DRIFT_BY_DROP_DATE = dg.AssetKey(lake.DRIFT_BY_DROP_DATE)
