"""monitoring_metrics: prediction and feature drift of one shard, in the metrics database."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping

import dagster as dg
import pandas as pd
import sqlalchemy as sa
import xarray as xr

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.tracking import Tracking
from droughtwatch_assets.core.drift import (
    ReferenceProfile,
    input_drift,
    monitoring_row,
    most_moved,
)
from droughtwatch_assets.defs import checks as shard_checks
from droughtwatch_assets.defs.keys import DRIFT_BY_DROP_DATE, INDICES, MONITORING, PREDICTIONS
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import MetricsDbResource
from droughtwatch_assets.pipeline.monitoring import REFERENCE_ARTIFACT, input_values, profiles
from droughtwatch_assets.pipeline.monitoring import drift_by_drop_date as summarize_by_drop_date

GROUP = "monitoring"
DRIFT_THRESHOLD = 0.25  # the earlier project's dashboard alerted above 0.25
# The estimated accuracy may fall this far below the model's validation accuracy before the
# estimated_performance check warns.
PERFORMANCE_DROP = 0.05

SPEC = dg.AssetSpec(
    MONITORING,
    deps=[PREDICTIONS, INDICES],
    description="One row per shard and model version in the `monitoring_metrics` table "
    "(replaced, never duplicated, when the shard is scored again): predicted class fractions, "
    "most common class share, share of missing predictions, prediction drift (Jensen-Shannon "
    "distance, natural log, against the model's predicted-label distribution on its validation "
    "shards), feature drift (PSI and Wasserstein distance of per-image mean NDVI and NDMI "
    "against the model's training shards), and accuracy and macro F1 when the shard is "
    "labelled. The table is this asset's only store: one upsert per shard, at the end of its "
    "work, so a shard that fails leaves no row. Partitions under train/ and val/ stay missing "
    "until someone scores them (see batch_predictions): the partitions are the shards', so that "
    "one run can ingest, score and monitor a drop.",
    group_name=GROUP,
    kinds={"sql"},
    partitions_def=shards,
    skippable=True,
)
CHECKS = {
    "prediction_drift": "Warns when prediction drift exceeds the threshold (run config "
    f"`drift_threshold`, default {DRIFT_THRESHOLD}).",
    "estimated_performance": "Warns when the accuracy the calibrated probabilities expect "
    "(CBPE, no labels needed) is more than the margin below the model's validation accuracy "
    f"(run config `performance_drop`, default {PERFORMANCE_DROP}).",
}
CHECK_SPECS = shard_checks.specs(MONITORING.path[0], CHECKS, set())


class References:
    """Each model version's monitoring reference (its MLflow run's reference.json), read once."""

    def __init__(self, tracking: Tracking):
        self._tracking = tracking

    @functools.cache  # noqa: B019 (one References per run: the cache dies with it)
    def validation(self, variant: str, version: str) -> tuple[float | None, float | None]:
        """The version's validation accuracy and macro F1 (its training run's metrics)."""
        metrics = self._tracking.version_metrics(variant, version)
        return metrics.get("val_accuracy"), metrics.get("val_macro_f1")

    @functools.cache  # noqa: B019 (one References per run: the cache dies with it)
    def inputs(self, variant: str, version: str) -> tuple[dict, dict]:
        """The version's per-input reference profiles and data-quality shares (empty for a
        model trained before they were recorded)."""
        reference = self._reference(variant, version)
        profiles_ = {
            f: ReferenceProfile.from_dict(d) for f, d in reference.get("inputs", {}).items()
        }
        return profiles_, dict(reference.get("quality", {}))

    @functools.cache  # noqa: B019 (one References per run: the cache dies with it)
    def _reference(self, variant: str, version: str) -> dict:
        run_id = self._tracking.version_run_id(variant, version)
        return self._tracking.load_dict(run_id, REFERENCE_ARTIFACT)

    @functools.cache  # noqa: B019 (one References per run: the cache dies with it)
    def profiles(self, variant: str, version: str):
        return profiles(self._reference(variant, version))


def monitor_one(
    key: str,
    predictions: pd.DataFrame,
    indices: xr.Dataset,
    references: References,
    engine: sa.Engine,
    *,
    run_id: str,
    drift_threshold: float,
    performance_drop: float = PERFORMANCE_DROP,
    quality: Mapping[str, float] | None = None,
) -> list:
    """Compute and upsert one shard's monitoring row; its materialization and check result."""
    name = str(predictions["model_name"].iloc[0]) if len(predictions) else ""
    version = str(predictions["model_version"].iloc[0]) if len(predictions) else ""
    label_reference, ndvi_reference, ndmi_reference = references.profiles(
        name.removeprefix("droughtwatch-"), version
    )
    probabilities = predictions[[f"P_{k}" for k in range(4)]].to_numpy()
    row = monitoring_row(
        shard_key=key,
        model_name=name,
        model_version=version,
        probabilities=probabilities,
        reference_labels_dist=label_reference,
        ndvi_means=indices["ndvi_mean"].values,
        ndmi_means=indices["ndmi_mean"].values,
        ndvi_reference=ndvi_reference,
        ndmi_reference=ndmi_reference,
        true_labels=indices["label"].values,
        dagster_run_id=run_id,
    )
    input_profiles, quality_reference = references.inputs(
        name.removeprefix("droughtwatch-"), version
    )
    inputs = input_drift(input_profiles, input_values(indices), quality_reference, quality)
    row["moved_input"] = most_moved(inputs)
    row["recorded_at"] = dt.datetime.now(dt.UTC)
    metricsdb.upsert_monitoring_row(engine, row, inputs)

    drift = row["prediction_drift"]
    val_accuracy, val_macro_f1 = references.validation(name.removeprefix("droughtwatch-"), version)
    estimated = row["estimated_accuracy"]
    floor = None if val_accuracy is None else val_accuracy - performance_drop
    low = estimated is not None and floor is not None and estimated < floor
    metadata = {
        k: v
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v is not None
    }
    return [
        dg.AssetMaterialization(
            asset_key=MONITORING,
            partition=key,
            metadata={
                **metadata,
                "model_name": name,
                "model_version": version,
                "moved_input": row["moved_input"] or "none",
                **{f"psi_{r['feature']}": r["psi"] for r in inputs if r["psi"] is not None},
                **({"val_accuracy": val_accuracy} if val_accuracy is not None else {}),
                **({"val_macro_f1": val_macro_f1} if val_macro_f1 is not None else {}),
            },
        ),
        shard_checks.evaluation(
            MONITORING.path[0],
            "estimated_performance",
            key,
            passed=not low,
            blocking=False,
            metadata={
                "estimated_accuracy": estimated if estimated is not None else float("nan"),
                "val_accuracy": val_accuracy if val_accuracy is not None else float("nan"),
                "margin": performance_drop,
            },
            description=f"estimated accuracy {estimated:.3f} < validation {val_accuracy:.3f} "
            f"- {performance_drop}"
            if low
            else (
                "no validation accuracy recorded for this model version: nothing to compare with"
                if floor is None
                else None
            ),
        ),
        shard_checks.evaluation(
            MONITORING.path[0],
            "prediction_drift",
            key,
            passed=drift <= drift_threshold,
            blocking=False,
            metadata={"prediction_drift": drift, "threshold": drift_threshold},
            description=None
            if drift <= drift_threshold
            else f"prediction drift {drift:.3f} > {drift_threshold}",
        ),
    ]


BY_DATE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("drop_date", "string"),
        dg.TableColumn("shards", "int"),
        dg.TableColumn("models", "string"),
        dg.TableColumn("prediction_drift", "float", description="mean over the date's shards"),
        dg.TableColumn("max_prediction_drift", "float"),
        dg.TableColumn("ndvi_psi", "float"),
        dg.TableColumn("ndmi_psi", "float"),
        dg.TableColumn("ndvi_wasserstein", "float"),
        dg.TableColumn("ndmi_wasserstein", "float"),
        dg.TableColumn("accuracy", "float", description="labelled shards only"),
        dg.TableColumn(
            "estimated_accuracy", "float", description="CBPE, from the calibrated probabilities"
        ),
    ]
)


@dg.asset(
    key=DRIFT_BY_DROP_DATE,
    group_name=GROUP,
    deps=[MONITORING],
    kinds={"sql"},
    automation_condition=dg.AutomationCondition.any_deps_updated()
    & ~dg.AutomationCondition.in_progress(),
    description="Drift over time, readable: one row per drop date, in date order (shards, the "
    "model versions that scored them, mean prediction drift, the highest, feature drift, "
    "accuracy where labelled), from the monitoring_metrics table, each shard at its latest "
    "scoring. Declarative automation refreshes it after monitoring_metrics changes, "
    "`droughtwatch score` at its end (drift_summary_job). The same rows are the "
    "Grafana dashboard's 'Drift by drop date' panel.",
)
def drift_by_drop_date(metrics_db: MetricsDbResource) -> dg.MaterializeResult:
    rows = summarize_by_drop_date(metricsdb.monitoring_rows(metrics_db.engine()))
    records = [
        dg.TableRecord({k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in row.items() if v is not None})
        for row in rows
    ]  # fmt: skip
    metadata: dict = {
        "by_drop_date": dg.MetadataValue.table(records, schema=BY_DATE_SCHEMA),
        "drop_dates": len(rows),
    }
    if rows:
        latest = rows[-1]
        metadata |= {
            "latest_drop_date": latest["drop_date"],
            **{
                f"latest_{name}": round(latest[name], 4)
                for name in ("prediction_drift", "ndvi_psi", "ndmi_psi")
            },
        }
    return dg.MaterializeResult(metadata=metadata)
