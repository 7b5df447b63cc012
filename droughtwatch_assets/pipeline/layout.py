"""The lake's layout: the assets' names and where each asset's partition lives.

Split from ``lake`` (the encodings) so that what only needs a key, such as discovery listing the
lake for ingested shards, imports no pandas, Arrow or xarray: the command line lists the lake
while its workers are still starting. Nothing here imports Dagster.
"""

from __future__ import annotations

# The assets, by the names their keys, lake folders and Dagster asset keys share.
RAW_TFRECORDS = "raw_tfrecords"
FILTERED_IMAGES = "filtered_images"
SPECTRAL_INDICES = "spectral_indices"
BATCH_PREDICTIONS = "batch_predictions"
MONITORING_METRICS = "monitoring_metrics"  # rows in the metrics database, nothing in the lake
TRAINING_CORPUS = "training_corpus"
TRAINED_MODEL = "trained_model"
REGISTERED_MODEL = "registered_model"
SERVING_MODEL = "serving_model"  # the MLflow registry's champion that scores, nothing in the lake
DRIFT_BY_DROP_DATE = "drift_by_drop_date"  # a summary of the metrics database, in metadata
# Assets with no partition: a run over shards (or a variant) materializes them once, not per key.
UNPARTITIONED = frozenset({TRAINING_CORPUS, SERVING_MODEL, DRIFT_BY_DROP_DATE})

# The suffix of each stored asset's objects: Arrow IPC for xarray Datasets, Parquet for
# DataFrames, JSON for dicts (``lake.KINDS`` has the types; a test keeps the two in step).
OBJECT_SUFFIXES = {
    RAW_TFRECORDS: ".json",
    FILTERED_IMAGES: ".arrow",
    SPECTRAL_INDICES: ".arrow",
    BATCH_PREDICTIONS: ".parquet",
    TRAINING_CORPUS: ".json",
    TRAINED_MODEL: ".json",
}


def lake_key(asset: str, partition: str | None, suffix: str) -> str:
    """Where an asset's partition lives in the lake: ``<asset>/<partition key><suffix>``."""
    return f"{asset}/{partition}{suffix}" if partition is not None else f"{asset}{suffix}"


def object_key(asset: str, partition: str | None) -> str:
    """The lake key of an asset's partition, e.g. ``spectral_indices/train/part-r-00012.arrow``."""
    return lake_key(asset, partition, OBJECT_SUFFIXES[asset])
