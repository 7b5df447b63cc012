"""Data-quality checks of the ingest assets, as plain functions over one partition's values.

The shard assets declare them with ``check_specs`` (partitioned like the shards) and yield one
evaluation per check and shard, recorded against that shard's partition: a run over many shards
records each shard's results on its own partition (an ``@asset_check`` on a partitioned asset
would load every partition).
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import xarray as xr

from droughtwatch_assets.core.images import FilterStats
from droughtwatch_assets.defs.checks import evaluation
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.pipeline.ingest import RawShardReport

BLANK_WARN_FRACTION = 0.10  # the benchmark has about 2 % blank images; 10 % means a bad scene
MIN_KEPT_FRACTION = 0.50  # fewer kept images than this means the filters or the data are off

RAW_CHECKS = {
    "schema_and_labels": "Every record decodes: both CRCs, bands B1..B11 of 4225 bytes, "
    "label 0..3 or absent.",
    "has_records": "The shard holds at least one record.",
}
FILTERED_CHECKS = {
    "kept_fraction": f"At least {MIN_KEPT_FRACTION:.0%} of the shard's images survive the filters.",
    "blank_fraction": f"Warns when more than {BLANK_WARN_FRACTION:.0%} of the images are blank.",
    "pixels_schema": "pixels is uint8 with dims (image, band, y, x), bands B1..B11, 65 x 65.",
}
INDICES_CHECKS = {
    "finite_values": "No NaN or infinity in the per-image index statistics.",
    "index_ranges": "Quantised indices within [-127, 127] and statistics within [-1, 1].",
}


RAW_BLOCKING = {"schema_and_labels", "has_records"}
FILTERED_BLOCKING = {"kept_fraction", "pixels_schema"}
INDICES_BLOCKING = {"finite_values", "index_ranges"}


def raw_checks(report: RawShardReport) -> list[dg.AssetCheckEvaluation]:
    key = report.key
    error_metadata: dict = {"error": report.error or ""}
    if report.error_record is not None:
        error_metadata["error_record"] = report.error_record
    return [
        evaluation(
            lake.RAW_TFRECORDS,
            "schema_and_labels",
            key,
            passed=report.valid,
            blocking="schema_and_labels" in RAW_BLOCKING,
            metadata=error_metadata,
            description=report.error,
        ),
        evaluation(
            lake.RAW_TFRECORDS,
            "has_records",
            key,
            passed=report.records > 0,
            blocking="has_records" in RAW_BLOCKING,
            metadata={"records": report.records},
            description=None
            if report.valid
            else "no records counted: the shard does not decode (see schema_and_labels)",
        ),
    ]


def filtered_checks(key: str, ds: xr.Dataset, stats: FilterStats) -> list[dg.AssetCheckEvaluation]:
    records_in = max(stats.records_in, 1)
    kept = stats.records_kept / records_in
    blank = stats.removed_blank / records_in
    pixels = ds["pixels"]
    schema_ok = (
        pixels.dtype == np.uint8
        and pixels.dims == ("image", "band", "y", "x")
        and pixels.shape[1:] == (11, 65, 65)
        and [str(b) for b in ds["band"].values] == [f"B{i}" for i in range(1, 12)]
    )
    return [
        evaluation(
            lake.FILTERED_IMAGES,
            "kept_fraction",
            key,
            passed=kept >= MIN_KEPT_FRACTION,
            blocking="kept_fraction" in FILTERED_BLOCKING,
            metadata={
                "kept_fraction": kept,
                "threshold": MIN_KEPT_FRACTION,
                "records_in": stats.records_in,
                "records_kept": stats.records_kept,
            },
        ),
        evaluation(
            lake.FILTERED_IMAGES,
            "blank_fraction",
            key,
            passed=blank <= BLANK_WARN_FRACTION,
            blocking="blank_fraction" in FILTERED_BLOCKING,
            metadata={"blank_fraction": blank, "threshold": BLANK_WARN_FRACTION},
        ),
        evaluation(
            lake.FILTERED_IMAGES,
            "pixels_schema",
            key,
            passed=bool(schema_ok),
            blocking="pixels_schema" in FILTERED_BLOCKING,
            metadata={
                "dtype": str(pixels.dtype),
                "dims": str(pixels.dims),
                "shape": str(pixels.shape),
            },
        ),
    ]


def _below(values: np.ndarray, minimum: int) -> int:
    """How many values are below `minimum`: a minimum first, counting only when there are any
    (a whole map compared and summed cost as much as the rest of the checks)."""
    return int((values < minimum).sum()) if values.size and values.min() < minimum else 0


def indices_checks(key: str, ds: xr.Dataset) -> list[dg.AssetCheckEvaluation]:
    # The Variables, not DataArrays: building one per look cost more than the checks' maths.
    values = {name: ds.variables[name] for name in ds.data_vars}
    stats = [name for name, var in values.items() if var.dims == ("image",)]
    non_finite = {name: int((~np.isfinite(values[name].values)).sum()) for name in stats}
    out_of_range = {
        name: int((np.abs(values[name].values) > 1.0).sum())
        for name in stats
        # The indices' statistics; the bands' per-image means (B1_mean..) are 0..255.
        if name.endswith(("_mean", "_std")) and name.startswith(("ndvi_", "ndmi_", "evi_"))
    }
    quantised_bad = {name: _below(values[name].values, -127) for name in ("ndvi", "ndmi", "evi")}
    return [
        evaluation(
            lake.SPECTRAL_INDICES,
            "finite_values",
            key,
            passed=sum(non_finite.values()) == 0,
            blocking="finite_values" in INDICES_BLOCKING,
            metadata={f"non_finite_{k}": v for k, v in non_finite.items()},
        ),
        evaluation(
            lake.SPECTRAL_INDICES,
            "index_ranges",
            key,
            passed=sum(out_of_range.values()) + sum(quantised_bad.values()) == 0,
            blocking="index_ranges" in INDICES_BLOCKING,
            metadata={
                **{f"out_of_range_{k}": v for k, v in out_of_range.items()},
                **{f"below_min_{k}": v for k, v in quantised_bad.items()},
            },
        ),
    ]
