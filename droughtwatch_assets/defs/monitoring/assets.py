"""monitoring_metrics: prediction and feature drift of one shard, in the metrics database."""

import datetime as dt

import dagster as dg
import pandas as pd
import xarray as xr

from droughtwatch_assets import metricsdb
from droughtwatch_assets.core.drift import monitoring_row
from droughtwatch_assets.defs.inference.assets import TRANSIENT_RETRIES
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import MetricsDbResource, MlflowResource
from droughtwatch_assets.monitoring import REFERENCE_ARTIFACT, profiles

GROUP = "monitoring"
DRIFT_THRESHOLD = 0.25  # the earlier project's dashboard alerted above 0.25


class MonitoringConfig(dg.Config):
    drift_threshold: float = DRIFT_THRESHOLD
    """Prediction drift (Jensen-Shannon distance) above which the drift check warns."""


@dg.asset(
    group_name=GROUP,
    partitions_def=shards,
    retry_policy=TRANSIENT_RETRIES,
    check_specs=[
        dg.AssetCheckSpec(
            "prediction_drift",
            asset="monitoring_metrics",
            description="Warns when prediction drift exceeds the threshold (default 0.25).",
        )
    ],
    kinds={"sql"},
)
def monitoring_metrics(
    context: dg.AssetExecutionContext,
    config: MonitoringConfig,
    mlflow: MlflowResource,
    metrics_db: MetricsDbResource,
    batch_predictions: pd.DataFrame,
    spectral_indices: xr.Dataset,
):
    """One row per shard and model version in the ``monitoring_metrics`` table (replaced, never
    duplicated, when the shard is scored again): predicted class fractions, most common class
    share, share of missing predictions, prediction drift (Jensen-Shannon distance, natural log,
    against the model's predicted-label distribution on its validation shards), feature drift
    (PSI and Wasserstein distance of per-image mean NDVI and NDMI against the model's training
    shards), and accuracy and macro F1 when the shard is labelled.

    The table is this asset's only store: one upsert at the very end, so a run that fails
    leaves no row and nothing else behind."""
    if batch_predictions.empty and spectral_indices.sizes["image"] == 0:
        context.log.warning("empty shard: nothing to monitor")
    name = str(batch_predictions["model_name"].iloc[0]) if len(batch_predictions) else ""
    version = str(batch_predictions["model_version"].iloc[0]) if len(batch_predictions) else ""
    variant = name.removeprefix("droughtwatch-")
    tracking = mlflow.tracking()
    run_id = tracking.version_run_id(variant, version)
    reference = tracking.load_dict(run_id, REFERENCE_ARTIFACT)
    label_reference, ndvi_reference, ndmi_reference = profiles(reference)

    probabilities = batch_predictions[[f"P_{k}" for k in range(4)]].to_numpy()
    row = monitoring_row(
        shard_key=context.partition_key,
        model_name=name,
        model_version=version,
        probabilities=probabilities,
        reference_labels_dist=label_reference,
        ndvi_means=spectral_indices["ndvi_mean"].values,
        ndmi_means=spectral_indices["ndmi_mean"].values,
        ndvi_reference=ndvi_reference,
        ndmi_reference=ndmi_reference,
        true_labels=spectral_indices["label"].values,
        dagster_run_id=context.run.run_id,
    )
    row["recorded_at"] = dt.datetime.now(dt.UTC)

    metricsdb.upsert_monitoring_row(metrics_db.engine(), row)

    drift = row["prediction_drift"]
    metadata = {
        k: v
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v is not None
    }
    yield dg.MaterializeResult(
        metadata={**metadata, "model_name": name, "model_version": version},
        check_results=[
            dg.AssetCheckResult(
                check_name="prediction_drift",
                passed=bool(drift <= config.drift_threshold),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"prediction_drift": drift, "threshold": config.drift_threshold},
                description=None
                if drift <= config.drift_threshold
                else f"prediction drift {drift:.3f} > {config.drift_threshold}",
            )
        ],
    )
