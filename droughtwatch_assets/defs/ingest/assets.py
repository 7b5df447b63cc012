"""The ingest assets: one partition per raw shard, from its validated bytes to spectral indices.

raw_tfrecords, filtered_images and spectral_indices are three assets (each with its own checks,
lineage and lake object) computed per shard by ``ingest_one``, which the shard op
(``defs.shards``) calls for every shard of a run: the shard is read and decoded once and the
filtered images go to the indices in memory. Any subset can still be materialized on its own;
the missing inputs then come from the data root and the lake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import xarray as xr

from droughtwatch_assets.adapters.storage import ObjectNotFound, Store
from droughtwatch_assets.core.images import CloudPolicy
from droughtwatch_assets.defs import checks as shard_checks
from droughtwatch_assets.defs.ingest import checks
from droughtwatch_assets.defs.keys import FILTERED, INDICES, RAW
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.pipeline.ingest import (
    RawShardReport,
    filter_shard,
    read_validated,
    shard_indices,
    validate_raw_shard,
)

GROUP = "ingest"
KEYS = (RAW, FILTERED, INDICES)

SPECS = [
    dg.AssetSpec(
        RAW,
        description="The raw shard as it sits in the data root, validated: size, checksum, "
        "record count, schema. An invalid shard is recorded with its error (which record, what "
        "is wrong), its blocking checks fail, and nothing downstream is built from it.",
        group_name=GROUP,
        kinds={"tfrecord"},
        partitions_def=shards,
        skippable=True,
    ),
    dg.AssetSpec(
        FILTERED,
        deps=[RAW],
        description="Decoded images as uint8 (image, band, y, x), blank images removed, cloudy "
        "ones flagged (see core.images for the rules). Written to the lake, and materialized, "
        "only when its blocking checks pass.",
        group_name=GROUP,
        kinds={"xarray", "arrow"},
        partitions_def=shards,
        skippable=True,
    ),
    dg.AssetSpec(
        INDICES,
        deps=[FILTERED],
        description="NDVI, NDMI and EVI per pixel (int8, CF-scaled) and per-image mean and "
        "standard deviation, the reference drift monitoring compares new drops with (see "
        "core.indices for the zero-denominator rule and the EVI guard). Written to the lake, "
        "and materialized, only when its blocking checks pass.",
        group_name=GROUP,
        kinds={"xarray", "arrow"},
        partitions_def=shards,
        skippable=True,
    ),
]

CHECK_SPECS = [
    *shard_checks.specs(lake.RAW_TFRECORDS, checks.RAW_CHECKS, checks.RAW_BLOCKING),
    *shard_checks.specs(lake.FILTERED_IMAGES, checks.FILTERED_CHECKS, checks.FILTERED_BLOCKING),
    *shard_checks.specs(lake.SPECTRAL_INDICES, checks.INDICES_CHECKS, checks.INDICES_BLOCKING),
]

Event = dg.AssetMaterialization | dg.AssetCheckEvaluation


@dataclass
class Ingested:
    """What one shard's ingest produced: its events (in asset order) and, when they were made in
    this step, the filtered images and indices the stages after it can use without a lake read."""

    events: list[Event] = field(default_factory=list)
    ok: bool = True  # every blocking check of what was done passed
    filtered: xr.Dataset | None = None
    indices: xr.Dataset | None = None
    # The raw_tfrecords report, written by `commit` once the events are recorded: its presence in
    # the lake is what discovery takes for "ingested", so it must never precede them.
    report: tuple[str, bytes | memoryview] | None = None

    def commit(self, lake_store: Store) -> None:
        if self.report is not None:
            lake_store.write_bytes(*self.report)


def read_report(lake_store: Store, key: str) -> RawShardReport:
    try:
        return RawShardReport.from_dict(lake.read(lake_store, lake.RAW_TFRECORDS, key, dict))
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            f"{exc}: materialize raw_tfrecords for partition {key!r} first"
        ) from exc


def _shard_mean(ds: xr.Dataset, name: str) -> float:
    values = ds[name].values
    return float(np.mean(values)) if values.size else float("nan")


def _materialization(asset: dg.AssetKey, key: str, metadata: dict, where: tuple[str, int]):
    url, size = where
    return dg.AssetMaterialization(
        asset_key=asset,
        partition=key,
        metadata={**metadata, "path": dg.MetadataValue.path(url), "stored_bytes": size},
    )


def ingest_one(
    key: str,
    todo: set[dg.AssetKey],
    data: Store,
    lake_store: Store,
    *,
    cloud_policy: CloudPolicy,
    max_cloud_fraction: float,
) -> Ingested:
    """Ingest one shard: the assets in `todo`, in order, each written to the lake and
    materialized only when its blocking checks pass. The raw_tfrecords report is written last,
    by ``Ingested.commit`` once the caller has recorded the events, so its presence in the lake
    (what discovery looks for) means the shard's other objects and its materializations are
    there too. A shard that fails a check stops there; it never raises for bad data."""
    out = Ingested()
    report: RawShardReport | None = None
    raw_events: list[Event] = []
    if RAW in todo:
        info = data.info(key)
        if info is None:
            raise ObjectNotFound(
                f"{data.url(key)} does not exist; the shard was removed after discovery"
            )
        report, decoded = validate_raw_shard(
            data.read_bytes(key), key, source=data.url(key), source_version=info.version
        )
        raw_events = checks.raw_checks(report)
        if decoded is None or not shard_checks.blocking_passed(raw_events):
            out.report = lake.prepare(lake.RAW_TFRECORDS, key, report.to_dict())
            out.events = [_raw_materialization(report, lake_store, out.report), *raw_events]
            out.ok = False
            return out  # nothing of a bad shard goes further
    elif FILTERED in todo:
        # Only downstream selected: decode the bytes raw_tfrecords validated, no others.
        decoded = read_validated(data, read_report(lake_store, key))

    events: list[Event] = []
    if FILTERED in todo:
        filtered, stats = filter_shard(
            decoded, cloud_policy=cloud_policy, max_cloud_fraction=max_cloud_fraction
        )
        del decoded
        results = checks.filtered_checks(key, filtered, stats)
        if shard_checks.blocking_passed(results):
            where = lake.write(lake_store, lake.FILTERED_IMAGES, key, filtered)
            metadata = {
                "records_in": stats.records_in,
                "records_kept": stats.records_kept,
                "removed_blank": stats.removed_blank,
                "removed_cloudy": stats.removed_cloudy,
                "flagged_cloudy": stats.flagged_cloudy,
                "cloud_policy": cloud_policy,
                "kept_label_counts": {str(k): v for k, v in stats.kept_label_counts.items()},
            }
            events.append(_materialization(FILTERED, key, metadata, where))
            out.filtered = filtered
        events.extend(results)
        if out.filtered is None:
            out.ok, todo = False, set()  # nothing of it goes further

    if INDICES in todo:
        filtered = out.filtered
        if filtered is None:
            try:
                filtered = lake.read(lake_store, lake.FILTERED_IMAGES, key, xr.Dataset)
            except ObjectNotFound as exc:
                raise ObjectNotFound(
                    f"{exc}: materialize filtered_images for partition {key!r} first"
                ) from exc
            out.filtered = filtered
        indices = shard_indices(filtered)
        results = checks.indices_checks(key, indices)
        if shard_checks.blocking_passed(results):
            where = lake.write(lake_store, lake.SPECTRAL_INDICES, key, indices)
            metadata = {
                "images": indices.sizes["image"],
                "mean_ndvi": _shard_mean(indices, "ndvi_mean"),
                "mean_ndmi": _shard_mean(indices, "ndmi_mean"),
                "mean_evi": _shard_mean(indices, "evi_mean"),
                "evi_guarded_fraction": _shard_mean(indices, "evi_guarded_fraction"),
            }
            events.append(_materialization(INDICES, key, metadata, where))
            out.indices = indices
        else:
            out.ok = False
        events.extend(results)

    if report is not None:
        out.report = lake.prepare(lake.RAW_TFRECORDS, key, report.to_dict())
        raw_events = [_raw_materialization(report, lake_store, out.report), *raw_events]
    out.events = [*raw_events, *events]
    return out


def _raw_materialization(
    report: RawShardReport, lake_store: Store, prepared: tuple[str, bytes | memoryview]
):
    where = (lake_store.url(prepared[0]), len(prepared[1]))
    return _materialization(
        RAW,
        report.key,
        {
            "source": dg.MetadataValue.path(report.source),
            "source_version": report.source_version,
            "size_bytes": report.size,
            "checksum": report.checksum,
            "records": report.records,
            "labelled": report.labelled,
            "label_counts": report.label_counts,
            "valid": report.valid,
        },
        where,
    )
