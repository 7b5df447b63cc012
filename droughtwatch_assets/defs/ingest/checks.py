"""Data-quality checks of the ingest assets, as plain functions over one partition's values.

The assets declare them with ``check_specs`` and yield their results from their own body, so
each check looks at its own partition only (an ``@asset_check`` on a partitioned asset would
load every partition).
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import xarray as xr

from droughtwatch_assets.core.images import FilterStats
from droughtwatch_assets.ingest import RawShardReport

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


def specs(asset: str, checks: dict[str, str], blocking: set[str]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset, description=text, blocking=name in blocking)
        for name, text in checks.items()
    ]


def blocking_passed(results: list[dg.AssetCheckResult], blocking: set[str]) -> bool:
    """Whether every blocking check passed: only then does the asset write to the lake."""
    return all(r.passed for r in results if r.check_name in blocking)


def raw_checks(report: RawShardReport) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            asset_key="raw_tfrecords",
            check_name="schema_and_labels",
            passed=report.valid,
            metadata={"error": report.error or "", "error_record": report.error_record or -1},
            description=report.error,
        ),
        dg.AssetCheckResult(
            asset_key="raw_tfrecords",
            check_name="has_records",
            passed=report.records > 0,
            metadata={"records": report.records},
        ),
    ]


def filtered_checks(ds: xr.Dataset, stats: FilterStats) -> list[dg.AssetCheckResult]:
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
        dg.AssetCheckResult(
            asset_key="filtered_images",
            check_name="kept_fraction",
            passed=kept >= MIN_KEPT_FRACTION,
            metadata={"kept_fraction": kept, "threshold": MIN_KEPT_FRACTION},
        ),
        dg.AssetCheckResult(
            asset_key="filtered_images",
            check_name="blank_fraction",
            passed=blank <= BLANK_WARN_FRACTION,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"blank_fraction": blank, "threshold": BLANK_WARN_FRACTION},
        ),
        dg.AssetCheckResult(
            asset_key="filtered_images",
            check_name="pixels_schema",
            passed=bool(schema_ok),
            metadata={
                "dtype": str(pixels.dtype),
                "dims": str(pixels.dims),
                "shape": str(pixels.shape),
            },
        ),
    ]


def indices_checks(ds: xr.Dataset) -> list[dg.AssetCheckResult]:
    stats = [name for name in ds.data_vars if ds[name].dims == ("image",)]
    non_finite = {name: int((~np.isfinite(ds[name].values)).sum()) for name in stats}
    out_of_range = {
        name: int((np.abs(ds[name].values) > 1.0).sum())
        for name in stats
        if name.endswith(("_mean", "_std"))
    }
    quantised_bad = {name: int((ds[name].values < -127).sum()) for name in ("ndvi", "ndmi", "evi")}
    return [
        dg.AssetCheckResult(
            asset_key="spectral_indices",
            check_name="finite_values",
            passed=sum(non_finite.values()) == 0,
            metadata={f"non_finite_{k}": v for k, v in non_finite.items()},
        ),
        dg.AssetCheckResult(
            asset_key="spectral_indices",
            check_name="index_ranges",
            passed=sum(out_of_range.values()) + sum(quantised_bad.values()) == 0,
            metadata={
                **{f"out_of_range_{k}": v for k, v in out_of_range.items()},
                **{f"below_min_{k}": v for k, v in quantised_bad.items()},
            },
        ),
    ]
