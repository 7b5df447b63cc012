"""The ingest assets: one partition per raw shard, from its validated bytes to spectral indices."""

from collections.abc import Iterator

import dagster as dg
import numpy as np
import xarray as xr

from droughtwatch_assets.core.images import CLOUD_MAX_FRACTION
from droughtwatch_assets.defs.ingest import checks
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import StorageResource
from droughtwatch_assets.ingest import (
    CloudPolicy,
    RawShardReport,
    filter_shard,
    read_validated,
    shard_indices,
    validate_raw_shard,
)
from droughtwatch_assets.storage import ObjectNotFound

GROUP = "ingest"


@dg.asset(
    group_name=GROUP,
    partitions_def=shards,
    check_specs=checks.specs("raw_tfrecords", checks.RAW_CHECKS, checks.RAW_BLOCKING),
    kinds={"tfrecord"},
)
def raw_tfrecords(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The raw shard as it sits in the data root, validated: size, checksum, record count, schema.

    A shard that fails validation is recorded with its error (which record, what is wrong), its
    blocking checks fail, and nothing downstream is built from it.
    """
    key = context.partition_key
    store = storage.data_store()
    info = store.info(key)
    if info is None:
        raise ObjectNotFound(
            f"{store.url(key)} does not exist; the shard was removed after it was discovered"
        )
    data = store.read_bytes(key)
    report, _ = validate_raw_shard(data, key, source=store.url(key), source_version=info.version)
    if not report.valid:
        context.log.error(f"invalid shard {key}: {report.error}")
    yield dg.Output(
        report.to_dict(),
        metadata={
            "source": dg.MetadataValue.path(report.source),
            "source_version": report.source_version,
            "size_bytes": report.size,
            "sha256": report.sha256,
            "records": report.records,
            "labelled": report.labelled,
            "label_counts": report.label_counts,
            "valid": report.valid,
        },
    )
    yield from checks.raw_checks(report)


class FilterConfig(dg.Config):
    cloud_policy: CloudPolicy = "flag"
    """'flag' keeps cloudy images with cloudy=True; 'remove' drops them."""
    max_cloud_fraction: float = CLOUD_MAX_FRACTION
    """An image is cloudy when more than this fraction of its pixels is cloudy."""


@dg.asset(
    group_name=GROUP,
    partitions_def=shards,
    check_specs=checks.specs("filtered_images", checks.FILTERED_CHECKS, checks.FILTERED_BLOCKING),
    kinds={"xarray", "parquet"},
)
def filtered_images(
    context: dg.AssetExecutionContext,
    config: FilterConfig,
    storage: StorageResource,
    raw_tfrecords: dict,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Decoded images as uint8 (image, band, y, x), blank images removed, cloudy ones flagged.

    Reads the shard again and refuses it when its bytes differ from those raw_tfrecords
    validated. See ``core.images`` for the blank and cloud rules. When a blocking check fails
    nothing is written to the lake, so whatever reads the lake reads checked data only.
    """
    report = RawShardReport.from_dict(raw_tfrecords)
    decoded = read_validated(storage.data_store(), report)
    ds, stats = filter_shard(
        decoded, cloud_policy=config.cloud_policy, max_cloud_fraction=config.max_cloud_fraction
    )
    results = checks.filtered_checks(ds, stats)
    stored = checks.blocking_passed(results, checks.FILTERED_BLOCKING)
    yield dg.Output(
        ds if stored else None,  # None: the IO manager writes nothing, the lake stays clean
        metadata={
            "stored": stored,
            "records_in": stats.records_in,
            "records_kept": stats.records_kept,
            "removed_blank": stats.removed_blank,
            "removed_cloudy": stats.removed_cloudy,
            "flagged_cloudy": stats.flagged_cloudy,
            "cloud_policy": config.cloud_policy,
            "kept_label_counts": {str(k): v for k, v in stats.kept_label_counts.items()},
        },
    )
    yield from results


@dg.asset(
    group_name=GROUP,
    partitions_def=shards,
    check_specs=checks.specs("spectral_indices", checks.INDICES_CHECKS, checks.INDICES_BLOCKING),
    kinds={"xarray", "parquet"},
)
def spectral_indices(filtered_images: xr.Dataset) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """NDVI, NDMI and EVI per pixel (int8, CF-scaled) and per-image mean and standard deviation.

    The per-image statistics are the reference that drift monitoring compares new drops with.
    See ``core.indices`` for the zero-denominator rule and the EVI guard. Written to the lake
    only when its blocking checks pass.
    """
    ds = shard_indices(filtered_images)

    def shard_mean(name: str) -> float:
        values = ds[name].values
        return float(np.mean(values)) if values.size else float("nan")

    results = checks.indices_checks(ds)
    stored = checks.blocking_passed(results, checks.INDICES_BLOCKING)
    yield dg.Output(
        ds if stored else None,
        metadata={
            "stored": stored,
            "images": ds.sizes["image"],
            "mean_ndvi": shard_mean("ndvi_mean"),
            "mean_ndmi": shard_mean("ndmi_mean"),
            "mean_evi": shard_mean("evi_mean"),
            "evi_guarded_fraction": shard_mean("evi_guarded_fraction"),
        },
    )
    yield from results


ingest_assets = [raw_tfrecords, filtered_images, spectral_indices]
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*ingest_assets),
    description="raw_tfrecords -> filtered_images -> spectral_indices, with checks, for one shard",
)
