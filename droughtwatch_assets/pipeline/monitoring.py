"""The monitoring reference of a trained model, and the reading of what monitoring compares.

A model's reference is fixed when it is trained and travels with its MLflow run as
``reference.json``: the predicted-label distribution of the model on its validation shards
(what prediction drift is measured against) and the distribution of the per-image mean NDVI
and NDMI over its training shards (what feature drift is measured against). Nothing here
imports Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from droughtwatch_assets.adapters.storage import Store
from droughtwatch_assets.core.drift import ReferenceProfile, reference_profile
from droughtwatch_assets.core.imagestack import read_columns
from droughtwatch_assets.core.tfrecord import BANDS
from droughtwatch_assets.pipeline.lake import (
    FILTERED_IMAGES,
    RAW_TFRECORDS,
    SPECTRAL_INDICES,
    object_key,
    read,
)

REFERENCE_ARTIFACT = "reference.json"

def training_reference(
    lake: Store, train_keys: Sequence[str], val_confusion: Sequence[Sequence[int]]
) -> dict:
    """The reference.json of a model trained on `train_keys` with this val confusion matrix."""
    confusion = np.asarray(val_confusion, dtype=np.float64)
    predicted = confusion.sum(axis=0)
    inputs, quality = input_reference(lake, train_keys)
    return {
        "predicted_label_distribution": (predicted / max(predicted.sum(), 1.0)).tolist(),
        # What monitoring_metrics' ndvi_psi and ndmi_psi compare with: the same profiles.
        "ndvi_mean": inputs["ndvi"],
        "ndmi_mean": inputs["ndmi"],
        "inputs": inputs,
        "quality": quality,
        "train_shards": list(train_keys),
    }


def profiles(reference: dict) -> tuple[list[float], ReferenceProfile, ReferenceProfile]:
    return (
        list(reference["predicted_label_distribution"]),
        ReferenceProfile.from_dict(reference["ndvi_mean"]),
        ReferenceProfile.from_dict(reference["ndmi_mean"]),
    )


DROP_DATE = re.compile(r"^drops/(\d{4}-\d{2}-\d{2})/")
BY_DATE_COLUMNS = (
    "prediction_drift",
    "ndvi_psi",
    "ndmi_psi",
    "ndvi_wasserstein",
    "ndmi_wasserstein",
    "accuracy",
    "estimated_accuracy",
)


def drift_by_drop_date(rows: Sequence[Mapping]) -> list[dict]:
    """Monitoring rows (``metricsdb.monitoring_rows``, oldest first) as one row per drop date,
    in date order: the number of shards, the model versions that scored them, and the mean of
    each drift measure (accuracy over the labelled shards only, None without any). Each shard
    counts once, with its latest scoring; shards outside ``drops/<date>/`` are left out."""
    latest: dict[str, Mapping] = {}
    for row in rows:
        if DROP_DATE.match(row["shard_key"]):
            latest[row["shard_key"]] = row  # rows come oldest first: the last one wins
    by_date: dict[str, list[Mapping]] = {}
    for key, row in latest.items():
        by_date.setdefault(DROP_DATE.match(key).group(1), []).append(row)  # type: ignore[union-attr]
    summary = []
    for date in sorted(by_date):
        group = by_date[date]
        out: dict = {
            "drop_date": date,
            "shards": len(group),
            "models": ", ".join(
                sorted({f"{r['model_name']} v{r['model_version']}" for r in group})
            ),
        }
        for column in BY_DATE_COLUMNS:
            values = [r[column] for r in group if r.get(column) is not None]
            out[column] = float(np.mean(values)) if values else None
        out["max_prediction_drift"] = max(float(r["prediction_drift"]) for r in group)
        summary.append(out)
    return summary


# The inputs a model reads, as per-image means in spectral_indices: the 11 bands and 3 indices.
INPUT_FEATURES = (*BANDS, "ndvi", "ndmi", "evi")
QUALITY_SHARES = ("blank_share", "cloudy_share", "evi_guarded_share")


def input_values(indices: xr.Dataset) -> dict[str, np.ndarray]:
    """Each input's per-image means in one shard's indices (features absent from an older
    lake object are left out)."""
    return {
        f: indices[f"{f}_mean"].values.astype(np.float64)
        for f in INPUT_FEATURES
        if f"{f}_mean" in indices
    }


def quality_shares(records: int, cloudy: np.ndarray, evi_guarded: np.ndarray) -> dict[str, float]:
    """A shard's data quality: the share of its records removed as blank, and of its kept
    images flagged cloudy and with any EVI-guarded pixel."""
    kept = len(cloudy)
    return {
        "blank_share": (records - kept) / records if records else 0.0,
        "cloudy_share": float(np.mean(cloudy)) if kept else 0.0,
        "evi_guarded_share": float(np.mean(np.asarray(evi_guarded) > 0)) if kept else 0.0,
    }


def input_reference(lake: Store, train_keys: Sequence[str]) -> tuple[dict, dict]:
    """The training shards' input profiles (``{feature: ReferenceProfile dict}``, for the
    features every shard has) and their data-quality shares (over all their records)."""
    guard = "evi_guarded_fraction"
    parts: dict[str, list[np.ndarray]] = {f: [] for f in INPUT_FEATURES}
    records, cloudy, guarded = 0, [], []
    for key in train_keys:
        # One read of the shard's indices: its input means and its EVI guard together.
        data = lake.read_bytes(object_key(SPECTRAL_INDICES, key))
        try:
            ds = read_columns(data, [*(f"{f}_mean" for f in INPUT_FEATURES), guard])
        except KeyError:  # ingested before the band means existed: indices only
            ds = read_columns(data, [*(f"{f}_mean" for f in ("ndvi", "ndmi", "evi")), guard])
        for feature, values in input_values(ds).items():
            parts[feature].append(values)
        guarded.append(ds[guard].values)
        records += int(read(lake, RAW_TFRECORDS, key, dict).get("records", 0))
        filtered = read_columns(lake.read_bytes(object_key(FILTERED_IMAGES, key)), ["cloudy"])
        cloudy.append(filtered["cloudy"].values)
    n = len(train_keys)
    profiles = {
        f: reference_profile(np.concatenate(v)).to_dict()
        for f, v in parts.items()
        if len(v) == n and n and sum(len(a) for a in v)
    }
    # The same shares as one shard's, over all the training shards' records and images.
    quality = quality_shares(
        records,
        np.concatenate(cloudy) if cloudy else np.empty(0, bool),
        np.concatenate(guarded) if guarded else np.empty(0),
    )
    return profiles, quality
