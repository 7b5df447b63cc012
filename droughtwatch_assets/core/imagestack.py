"""Image stacks as xarray Datasets, and an exact codec for datasets indexed by image.

Stored as an Arrow IPC (Feather v2) file, one row per image: 1-D variables are plain columns,
N-D ones hold each image's bytes, lz4-compressed column by column. Arrow IPC rather than
Parquet because the ingest and the training input pipeline are bound by encoding and decoding
these bytes: on the benchmark's shards Parquet spent about 0.04 ms per image more than IPC at
the same codec, and lz4 writes about twice as fast as zstd level 1. Any Arrow reader (pyarrow,
polars, DuckDB) opens the files.

lz4 runs at acceleration LZ4_ACCELERATION (Arrow's compression level -64), which skips ahead
faster through bytes that do not repeat. That is most of a Drought Watch patch: the red, NIR
and SWIR bands (B4-B7) and the int8 index maps hardly compress at all, while the smooth bands
(cirrus B9, the 100 m thermal bands B10 and B11, coastal and blue B1 and B2) still do. On the
benchmark's shards it writes images about 40 % faster than the default level, for images
about 11 % larger. The lake stores the spectral indices uncompressed (``lake.COMPRESSION``: lz4
saved 1 % of their bytes): filtered images plus indices take about 1.04 times the raw shard
(1.06 on the real sample), inside the 1.1 budget (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import xarray as xr

from droughtwatch_assets.core.tfrecord import BANDS, IMAGE_SIDE

IMAGE_DIM = "image"
METADATA_KEY = b"droughtwatch.xarray"
CODEC_VERSION = 1
# lz4 "acceleration": Arrow passes a negative compression level to lz4 as -acceleration.
LZ4_ACCELERATION = 64
_ARROW_NATIVE_KINDS = "biuf"  # 1-D dtypes stored as ordinary Arrow columns
# The band coordinate and its index, built once: building the index with each shard's dataset
# cost as much as the rest of the dataset (indexes are immutable, so datasets can share one).
_BAND = xr.Coordinates({"band": np.array(BANDS)})


def image_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    *,
    cloud_fraction: np.ndarray,
    cloudy: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap a (n, 11, 65, 65) uint8 stack and its per-image fields as a Dataset.

    Pixels stay uint8: scaling to [0, 1] is the reader's business, so storage stays 1 byte/pixel.
    """
    images = np.asarray(images)
    expected = (len(BANDS), IMAGE_SIDE, IMAGE_SIDE)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 with shape (n, {', '.join(map(str, expected))}), "
            f"got {images.dtype} {images.shape}"
        )
    n = images.shape[0]
    per_image = {
        "labels": np.asarray(labels),
        "ids": np.asarray(ids),
        "cloud_fraction": np.asarray(cloud_fraction),
        "cloudy": np.asarray(cloudy),
    }
    for name, values in per_image.items():
        if values.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match images, got {values.shape}")
    if per_image["ids"].dtype.kind != "U":
        if n:
            raise ValueError(f"ids must be a unicode array, got dtype {per_image['ids'].dtype}")
        per_image["ids"] = per_image["ids"].astype(str)  # np.array([]) is float64
    coords = xr.Coordinates(
        {
            "band": _BAND.variables["band"],
            "id": (IMAGE_DIM, per_image["ids"]),
            "label": (IMAGE_DIM, per_image["labels"].astype(np.int8)),
        },
        indexes=_BAND.xindexes,
    )
    return xr.Dataset(
        data_vars={
            "pixels": ((IMAGE_DIM, "band", "y", "x"), images),
            "cloud_fraction": (IMAGE_DIM, per_image["cloud_fraction"].astype(np.float32)),
            "cloudy": (IMAGE_DIM, per_image["cloudy"].astype(bool)),
        },
        coords=coords,
        attrs=dict(attrs or {}),
    )


# --- attrs as JSON, with numpy scalars, arrays and tuples tagged so that they come back as such.


def _encode_attr(value: Any, where: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufcUS":
            raise TypeError(f"attribute {where}: unsupported array dtype {value.dtype}")
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "data": value.tolist()}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_attr(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode_attr(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"attribute {where}: dict keys must be strings")
        return {k: _encode_attr(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"attribute {where}: cannot store {type(value).__name__} in the Arrow schema metadata"
    )


def _decode_attr(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_attr(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype(value["__ndarray__"])
        return np.array(value["data"], dtype=dtype).reshape(value["shape"])
    if "__npscalar__" in value:
        return np.dtype(value["__npscalar__"]).type(value["value"])
    if "__tuple__" in value:
        return tuple(_decode_attr(v) for v in value["__tuple__"])
    return {k: _decode_attr(v) for k, v in value.items()}


def _encode_attrs(attrs: Mapping[Hashable, Any], where: str) -> dict[str, Any]:
    for key in attrs:
        if not isinstance(key, str):
            raise TypeError(f"attribute names must be strings, got {key!r} on {where}")
    return {str(k): _encode_attr(v, f"{where}.{k}") for k, v in attrs.items()}


def _decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _decode_attr(v) for k, v in attrs.items()}


# --- the codec


def _split_labels(ds: xr.Dataset, var: xr.Variable) -> list[str] | None:
    """Per-coordinate column labels along the variable's second dimension, if it has a coordinate.

    Separate columns per band compress better: each column then holds one band's statistics.
    """
    if var.ndim < 2 or var.dims[1] not in ds.indexes:
        return None
    labels = [str(v) for v in ds.indexes[var.dims[1]]]
    return labels if len(set(labels)) == len(labels) else None


def _fixed_size_column(values: np.ndarray) -> pa.Array:
    """One fixed-size-binary cell per image, holding the image's C-order bytes (zero copy)."""
    values = np.ascontiguousarray(values)
    n = values.shape[0]
    width = values.itemsize * (values.size // n if n else int(np.prod(values.shape[1:])))
    if width == 0:
        raise ValueError("cannot store variables with a zero-sized non-image dimension")
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), n, [None, pa.py_buffer(values.reshape(-1).view(np.uint8))]
    )


def _from_fixed_size_column(
    column: pa.ChunkedArray, dtype: np.dtype, tail: Sequence[int]
) -> np.ndarray:
    array = column.combine_chunks()
    n = len(array)
    width = array.type.byte_width
    if n == 0:
        return np.empty((0, *tail), dtype=dtype)
    raw = np.frombuffer(
        array.buffers()[1], dtype=np.uint8, count=n * width, offset=array.offset * width
    )
    return raw.view(dtype).reshape(n, *tail)


def _native_column(values: np.ndarray, name: str) -> pa.Array:
    kind = values.dtype.kind
    if kind == "U":
        return pa.array(values, type=pa.string())
    if kind == "S":
        return pa.array(values, type=pa.binary())
    if kind in _ARROW_NATIVE_KINDS:
        # Arrow rejects byte-swapped arrays; the stored dtype restores the byte order on read.
        return pa.array(values.astype(values.dtype.newbyteorder("="), copy=False))
    raise TypeError(f"variable {name!r}: dtype {values.dtype} cannot be stored as a 1-D column")


def _from_native_column(column: pa.ChunkedArray, dtype: np.dtype) -> np.ndarray:
    if len(column) == 0:
        return np.empty(0, dtype=dtype)
    values = column.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=dtype)


def dataset_to_arrow(
    ds: xr.Dataset,
    *,
    compression: str | None = "lz4",
    compression_level: int | None = None,
) -> memoryview:
    """Encode a dataset whose variables and coordinates all start with the `image` dimension.

    Coordinates without the `image` dimension (such as `band`) go, with dtypes, dims, shapes and
    all attrs, into the Arrow schema metadata, so `dataset_from_arrow` gives back an identical
    dataset. An N-D variable whose second dimension has a coordinate is split into one column per
    coordinate value (`pixels/B1` ... `pixels/B11`). Without a `compression_level`, lz4 runs at
    LZ4_ACCELERATION and other codecs at their default level.
    """
    n = ds.sizes.get(IMAGE_DIM, 0)
    columns: dict[str, pa.Array] = {}
    static_coords: dict[str, Any] = {}
    variables: list[dict[str, Any]] = []
    for role, names in (("coord", ds.coords), ("data", ds.data_vars)):
        for name in names:  # names only: building each DataArray cost a third of the encoding
            if not isinstance(name, str):
                raise TypeError(f"variable names must be strings, got {name!r}")
            var = ds.variables[name]
            if not var.dims or var.dims[0] != IMAGE_DIM:
                if role == "data":
                    raise ValueError(
                        f"data variable {name!r} has dims {var.dims}; every data variable "
                        f"must have {IMAGE_DIM!r} as its first dimension"
                    )
                if IMAGE_DIM in var.dims:
                    raise ValueError(f"coordinate {name!r} has {IMAGE_DIM!r} but not first")
                values = var.values
                static_coords[name] = {
                    "dims": list(var.dims),
                    "value": _encode_attr(values, name),
                    "attrs": _encode_attrs(var.attrs, name),
                }
                continue
            values = var.values
            entry: dict[str, Any] = {
                "name": name,
                "role": role,
                "dims": list(var.dims),
                "dtype": values.dtype.str,
                "tail": list(values.shape[1:]),
                "attrs": _encode_attrs(var.attrs, name),
            }
            if var.ndim == 1:
                entry["columns"] = [name]
                columns[name] = _native_column(values, name)
            else:
                if values.dtype.kind == "O":
                    raise TypeError(f"variable {name!r}: object arrays cannot be stored")
                labels = _split_labels(ds, var)
                if labels is None:
                    entry["columns"] = [name]
                    columns[name] = _fixed_size_column(values)
                else:
                    entry["columns"] = [f"{name}/{label}" for label in labels]
                    for k, column in enumerate(entry["columns"]):
                        columns[column] = _fixed_size_column(values[:, k])
            variables.append(entry)
    all_columns = [c for entry in variables for c in entry["columns"]]
    if len(set(all_columns)) != len(all_columns):
        raise ValueError(f"column names collide: {sorted(all_columns)}")
    metadata = {
        "version": CODEC_VERSION,
        "image_count": int(n),
        "variables": variables,
        "static_coords": static_coords,
        "attrs": _encode_attrs(ds.attrs, "dataset"),
    }
    schema = pa.schema(
        [pa.field(c, columns[c].type) for c in all_columns],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )
    table = pa.Table.from_arrays([columns[c] for c in all_columns], schema=schema)
    codec = None
    if compression is not None:
        if compression_level is None and compression == "lz4":
            compression_level = -LZ4_ACCELERATION
        codec = pa.Codec(compression, compression_level)
    options = ipc.IpcWriteOptions(compression=codec, use_threads=False)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema, options=options) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())  # no copy into a bytes object


def _metadata(buffer: pa.Buffer) -> tuple[pa.Schema, dict[str, Any]]:
    try:
        schema = ipc.open_file(buffer).schema
    except pa.ArrowInvalid as exc:
        raise ValueError(f"not a droughtwatch dataset: not an Arrow IPC file ({exc})") from exc
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not a droughtwatch dataset: Arrow schema has no dataset metadata")
    metadata = json.loads(raw)
    if metadata.get("version") != CODEC_VERSION:
        raise ValueError(f"unsupported dataset codec version {metadata.get('version')!r}")
    return schema, metadata


def _open(
    data: bytes | memoryview, fields: Sequence[str] | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The table (only the named fields when given: the others are not even decompressed) and
    the dataset metadata from its schema."""
    buffer = pa.py_buffer(data)
    schema, metadata = _metadata(buffer)
    options = ipc.IpcReadOptions(use_threads=False)
    if fields is not None:
        options = ipc.IpcReadOptions(
            use_threads=False, included_fields=[schema.get_field_index(f) for f in fields]
        )
    return ipc.open_file(buffer, options=options).read_all(), metadata


def _decode_variable(entry: dict[str, Any], table: pa.Table, n: int) -> xr.Variable:
    dtype = np.dtype(entry["dtype"])
    tail = entry["tail"]
    names = entry["columns"]
    if not tail:
        values = _from_native_column(table.column(names[0]), dtype)
    elif len(names) == 1:
        # Copy: the Arrow buffer is read-only and may be unaligned for the dtype.
        values = _from_fixed_size_column(table.column(names[0]), dtype, tail).copy()
    else:
        # One column per label of the second dimension (per band): filled label by label into a
        # label-major array, seen through a transposed view, as tfrecord.empty_stack lays out
        # decoded images.
        by_label = np.empty((len(names), n, *tail[1:]), dtype=dtype)
        for k, column in enumerate(names):
            by_label[k] = _from_fixed_size_column(table.column(column), dtype, tail[1:])
        values = by_label.swapaxes(0, 1)
    return xr.Variable(entry["dims"], values, attrs=_decode_attrs(entry["attrs"]))


def _build(metadata: dict[str, Any], variables: dict[str, xr.Variable]) -> xr.Dataset:
    coords: dict[str, xr.Variable] = {}
    for name, static in metadata["static_coords"].items():
        coords[name] = xr.Variable(
            static["dims"], _decode_attr(static["value"]), attrs=_decode_attrs(static["attrs"])
        )
    data_vars: dict[str, xr.Variable] = {}
    for entry in metadata["variables"]:
        if entry["name"] in variables:
            target = coords if entry["role"] == "coord" else data_vars
            target[entry["name"]] = variables[entry["name"]]
    return xr.Dataset(data_vars, coords=coords, attrs=_decode_attrs(metadata["attrs"]))


def dataset_from_arrow(
    data: bytes | memoryview,
    *,
    variables: Sequence[str] | None = None,
    select: Mapping[str, Sequence[str]] | None = None,
) -> xr.Dataset:
    """Decode bytes written by `dataset_to_arrow` into an identical Dataset.

    `variables` keeps only those data variables (coordinates along `image` always come along);
    `select` keeps only some labels of a split dimension, e.g. ``{"band": ["B2", "B3"]}``.
    Columns left out are not even decompressed: the training pipeline reads just the bands and
    indices a variant uses.
    """
    _, metadata = _metadata(pa.py_buffer(data))
    select = {dim: [str(label) for label in labels] for dim, labels in (select or {}).items()}
    entries = []
    for entry in metadata["variables"]:
        if entry["role"] == "data" and variables is not None and entry["name"] not in variables:
            continue
        dim = entry["dims"][1] if len(entry["dims"]) > 1 else None
        if dim in select and len(entry["columns"]) > 1:
            prefix = f"{entry['name']}/"
            have = {column[len(prefix) :] for column in entry["columns"]}
            missing = [label for label in select[dim] if label not in have]
            if missing:
                raise KeyError(f"{entry['name']} has no {dim} {missing}; it has {sorted(have)}")
            entry = {
                **entry,
                "columns": [prefix + label for label in select[dim]],
                "tail": [len(select[dim]), *entry["tail"][1:]],
            }
        entries.append(entry)
    if variables is not None:
        unknown = set(variables) - {e["name"] for e in entries}
        if unknown:
            raise KeyError(f"no variable(s) {sorted(unknown)} in the dataset")
    table, _ = _open(data, fields=[c for e in entries for c in e["columns"]])
    n = metadata["image_count"]
    decoded = {e["name"]: _decode_variable(e, table, n) for e in entries}
    static = dict(metadata["static_coords"])
    for dim, labels in select.items():
        if dim in static:
            static[dim] = {**static[dim], "value": _encode_attr(np.array(labels), dim)}
    return _build({**metadata, "variables": entries, "static_coords": static}, decoded)


def read_columns(data: bytes | memoryview, variables: Sequence[str]) -> xr.Dataset:
    """Decode only the named 1-D variables; the other columns are not even decompressed.

    The result keeps the non-image coordinates and the dataset attrs.
    """
    _, metadata = _metadata(pa.py_buffer(data))
    entries = {e["name"]: e for e in metadata["variables"]}
    wanted = []
    for name in variables:
        entry = entries.get(name)
        if entry is None:
            raise KeyError(f"no variable {name!r} in dataset; it has {sorted(entries)}")
        if entry["tail"]:
            raise ValueError(
                f"variable {name!r} has dims {entry['dims']}; only 1-D ones can be read by column"
            )
        wanted.append(entry)
    table, _ = _open(data, fields=[e["columns"][0] for e in wanted])
    n = metadata["image_count"]
    decoded = {e["name"]: _decode_variable(e, table, n) for e in wanted}
    return _build(metadata, decoded)
