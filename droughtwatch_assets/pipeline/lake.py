"""The lake's layout and encodings: where each asset's partition lives and how it is stored.

One object per asset and partition, ``<asset>/<partition key><suffix>``: xarray Datasets as
Arrow IPC (``.arrow``), pandas DataFrames as Parquet (``.parquet``), dicts as JSON (``.json``).
Writes are atomic (see ``storage``), so re-materializing a partition replaces exactly its own
object. Nothing here imports Dagster: the shard assets, the IO manager, the CLI and the
benchmarks all go through these functions.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from droughtwatch_assets.adapters.storage import Store
from droughtwatch_assets.core.imagestack import dataset_from_arrow, dataset_to_arrow

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

SUFFIXES = {xr.Dataset: ".arrow", pd.DataFrame: ".parquet", dict: ".json"}
# What each asset stores per partition (a trained model's own files live in MLflow; the lake
# keeps its training summary).
KINDS: dict[str, type] = {
    RAW_TFRECORDS: dict,
    FILTERED_IMAGES: xr.Dataset,
    SPECTRAL_INDICES: xr.Dataset,
    BATCH_PREDICTIONS: pd.DataFrame,
    TRAINING_CORPUS: dict,
    TRAINED_MODEL: dict,
}


def lake_key(asset: str, partition: str | None, suffix: str) -> str:
    """Where an asset's partition lives in the lake: ``<asset>/<partition key><suffix>``."""
    return f"{asset}/{partition}{suffix}" if partition is not None else f"{asset}{suffix}"


def object_key(asset: str, partition: str | None) -> str:
    """The lake key of an asset's partition, e.g. ``spectral_indices/train/part-r-00012.arrow``."""
    return lake_key(asset, partition, SUFFIXES[KINDS[asset]])


def encode(obj: Any) -> tuple[str, bytes | memoryview]:
    """The suffix and bytes an object is stored as."""
    if isinstance(obj, xr.Dataset):
        return ".arrow", dataset_to_arrow(obj)
    if isinstance(obj, pd.DataFrame):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(obj, preserve_index=False), sink)
        return ".parquet", memoryview(sink.getvalue())
    if isinstance(obj, dict):
        return ".json", json.dumps(obj, indent=1, sort_keys=True).encode()
    raise TypeError(f"the lake stores xarray Datasets, DataFrames and dicts, not {type(obj)}")


def decode(suffix: str, data: bytes | memoryview) -> Any:
    if suffix == ".arrow":
        return dataset_from_arrow(data)
    if suffix == ".parquet":
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    return json.loads(bytes(data))


def write(lake: Store, asset: str, partition: str | None, obj: Any) -> tuple[str, int]:
    """Store `obj` as the asset's partition; returns its URL and size in bytes."""
    key, data = prepare(asset, partition, obj)
    lake.write_bytes(key, data)
    return lake.url(key), len(data)


def prepare(asset: str, partition: str | None, obj: Any) -> tuple[str, bytes | memoryview]:
    """The key and bytes `write` would store, for a write made later."""
    suffix, data = encode(obj)
    return lake_key(asset, partition, suffix), data


def read(lake: Store, asset: str, partition: str | None, kind: type) -> Any:
    """The stored partition of an asset, as `kind` (xr.Dataset, pd.DataFrame or dict)."""
    suffix = SUFFIXES[kind]
    return decode(suffix, lake.read_bytes(lake_key(asset, partition, suffix)))


def exists(lake: Store, asset: str, partition: str | None, kind: type) -> bool:
    return lake.exists(lake_key(asset, partition, SUFFIXES[kind]))
