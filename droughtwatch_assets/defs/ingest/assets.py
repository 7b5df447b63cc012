"""The ingest assets: one partition per raw shard, from its validated bytes to spectral indices.

raw_tfrecords, filtered_images and spectral_indices are three assets (each with its own checks,
lineage and lake object) computed by one op, ``ingest_shard``: the shard is read and decoded
once and the filtered images go to the indices in memory, instead of three steps that each
read back what the previous one wrote. Any subset can still be materialized on its own; the
missing inputs then come from the data root and the lake.
"""

import json
from collections.abc import Iterator

import dagster as dg
import numpy as np
import xarray as xr

from droughtwatch_assets.core.images import CLOUD_MAX_FRACTION
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.defs.ingest import checks
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import StorageResource, lake_key
from droughtwatch_assets.defs.run_tags import run_tags
from droughtwatch_assets.ingest import (
    CloudPolicy,
    RawShardReport,
    filter_shard,
    read_validated,
    shard_indices,
    validate_raw_shard,
)
from droughtwatch_assets.storage import ObjectNotFound, Store

GROUP = "ingest"
RAW = dg.AssetKey("raw_tfrecords")
FILTERED = dg.AssetKey("filtered_images")
INDICES = dg.AssetKey("spectral_indices")

ASSET_OUTS = {
    "raw_tfrecords": dg.AssetOut(
        description="The raw shard as it sits in the data root, validated: size, checksum, "
        "record count, schema. An invalid shard is recorded with its error (which record, what "
        "is wrong), its blocking checks fail, and nothing downstream is built from it.",
        group_name=GROUP,
        kinds={"tfrecord"},
        is_required=False,
    ),
    "filtered_images": dg.AssetOut(
        description="Decoded images as uint8 (image, band, y, x), blank images removed, cloudy "
        "ones flagged (see core.images for the rules). Written to the lake only when its "
        "blocking checks pass.",
        group_name=GROUP,
        kinds={"xarray", "arrow"},
        is_required=False,
    ),
    "spectral_indices": dg.AssetOut(
        description="NDVI, NDMI and EVI per pixel (int8, CF-scaled) and per-image mean and "
        "standard deviation, the reference drift monitoring compares new drops with (see "
        "core.indices for the zero-denominator rule and the EVI guard). Written to the lake "
        "only when its blocking checks pass.",
        group_name=GROUP,
        kinds={"xarray", "arrow"},
        is_required=False,
    ),
}

CHECK_SPECS = [
    *checks.specs("raw_tfrecords", checks.RAW_CHECKS, checks.RAW_BLOCKING),
    *checks.specs("filtered_images", checks.FILTERED_CHECKS, checks.FILTERED_BLOCKING),
    *checks.specs("spectral_indices", checks.INDICES_CHECKS, checks.INDICES_BLOCKING),
]


class IngestConfig(dg.Config):
    cloud_policy: CloudPolicy = "flag"
    """'flag' keeps cloudy images with cloudy=True; 'remove' drops them."""
    max_cloud_fraction: float = CLOUD_MAX_FRACTION
    """An image is cloudy when more than this fraction of its pixels is cloudy."""


def _read_report(lake: Store, key: str) -> RawShardReport:
    try:
        return RawShardReport.from_dict(json.loads(lake.read_bytes(lake_key(RAW, key, ".json"))))
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            f"{exc}: materialize raw_tfrecords for partition {key!r} first"
        ) from exc


def _shard_mean(ds: xr.Dataset, name: str) -> float:
    values = ds[name].values
    return float(np.mean(values)) if values.size else float("nan")


@dg.multi_asset(
    name="ingest_shard",
    outs=ASSET_OUTS,
    internal_asset_deps={
        "raw_tfrecords": set(),
        "filtered_images": {RAW},
        "spectral_indices": {FILTERED},
    },
    partitions_def=shards,
    check_specs=CHECK_SPECS,
    can_subset=True,
)
def ingest_shard(
    context: dg.AssetExecutionContext, config: IngestConfig, storage: StorageResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    key = context.partition_key
    selected = context.selected_asset_keys
    store, lake = storage.data_store(), storage.lake_store()

    filtered: xr.Dataset | None = None
    if RAW in selected or FILTERED in selected:
        if RAW in selected:
            info = store.info(key)
            if info is None:
                raise ObjectNotFound(
                    f"{store.url(key)} does not exist; the shard was removed after discovery"
                )
            report, decoded = validate_raw_shard(
                store.read_bytes(key), key, source=store.url(key), source_version=info.version
            )
            if not report.valid:
                context.log.error(f"invalid shard {key}: {report.error}")
            results = checks.raw_checks(report)
            yield dg.Output(
                report.to_dict(),
                output_name="raw_tfrecords",
                metadata={
                    "source": dg.MetadataValue.path(report.source),
                    "source_version": report.source_version,
                    "size_bytes": report.size,
                    "checksum": report.checksum,
                    "records": report.records,
                    "labelled": report.labelled,
                    "label_counts": report.label_counts,
                    "valid": report.valid,
                },
            )
            yield from results
            if decoded is None or not checks.blocking_passed(results, checks.RAW_BLOCKING):
                return  # nothing of a bad shard goes further
        else:
            # Only downstream selected: decode the bytes raw_tfrecords validated, no others.
            decoded = read_validated(store, _read_report(lake, key))

        if FILTERED not in selected:
            return
        filtered, stats = filter_shard(
            decoded, cloud_policy=config.cloud_policy, max_cloud_fraction=config.max_cloud_fraction
        )
        del decoded
        results = checks.filtered_checks(filtered, stats)
        stored = checks.blocking_passed(results, checks.FILTERED_BLOCKING)
        yield dg.Output(
            filtered if stored else None,  # None: the IO manager writes nothing
            output_name="filtered_images",
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
        if not stored:
            return

    if INDICES not in selected:
        return
    if filtered is None:
        try:
            filtered = dataset_from_arrow(lake.read_bytes(lake_key(FILTERED, key, ".arrow")))
        except ObjectNotFound as exc:
            raise ObjectNotFound(
                f"{exc}: materialize filtered_images for partition {key!r} first"
            ) from exc
    indices = shard_indices(filtered)
    results = checks.indices_checks(indices)
    stored = checks.blocking_passed(results, checks.INDICES_BLOCKING)
    yield dg.Output(
        indices if stored else None,
        output_name="spectral_indices",
        metadata={
            "stored": stored,
            "images": indices.sizes["image"],
            "mean_ndvi": _shard_mean(indices, "ndvi_mean"),
            "mean_ndmi": _shard_mean(indices, "ndmi_mean"),
            "mean_evi": _shard_mean(indices, "evi_mean"),
            "evi_guarded_fraction": _shard_mean(indices, "evi_guarded_fraction"),
        },
    )
    yield from results


ingest_assets = [ingest_shard]
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(RAW, FILTERED, INDICES),
    description="raw_tfrecords -> filtered_images -> spectral_indices, with checks, for one shard",
    tags=run_tags("ingest"),
)
