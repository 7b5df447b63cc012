"""The lake's encodings: how each asset's partition is stored (``layout`` says where).

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
from droughtwatch_assets.pipeline.layout import (  # the names and keys: this module's too
    BATCH_PREDICTIONS,
    DRIFT_BY_DROP_DATE,  # noqa: F401
    FILTERED_IMAGES,
    MONITORING_METRICS,  # noqa: F401
    OBJECT_SUFFIXES,  # noqa: F401
    RAW_TFRECORDS,
    REGISTERED_MODEL,  # noqa: F401
    SERVING_MODEL,  # noqa: F401
    SPECTRAL_INDICES,
    TRAINED_MODEL,
    TRAINING_CORPUS,
    UNPARTITIONED,  # noqa: F401
    lake_key,
    object_key,  # noqa: F401
)

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


# How each asset's Datasets are compressed where not "lz4": the spectral indices' int8 maps
# hardly compress (lz4 saved 1 % of their bytes for about 0.45 ms a shard, a tenth of their
# ingest), where the filtered images' smooth bands shrink by about a fifth.
COMPRESSION: dict[str, str | None] = {SPECTRAL_INDICES: None}


def encode(obj: Any, *, compression: str | None = "lz4") -> tuple[str, bytes | memoryview]:
    """The suffix and bytes an object is stored as (`compression`: an xarray Dataset's)."""
    if isinstance(obj, xr.Dataset):
        return ".arrow", dataset_to_arrow(obj, compression=compression)
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
    suffix, data = encode(obj, compression=COMPRESSION.get(asset, "lz4"))
    return lake_key(asset, partition, suffix), data


def read(lake: Store, asset: str, partition: str | None, kind: type) -> Any:
    """The stored partition of an asset, as `kind` (xr.Dataset, pd.DataFrame or dict)."""
    suffix = SUFFIXES[kind]
    return decode(suffix, lake.read_bytes(lake_key(asset, partition, suffix)))


def exists(lake: Store, asset: str, partition: str | None, kind: type) -> bool:
    return lake.exists(lake_key(asset, partition, SUFFIXES[kind]))
