"""batch_predictions: the champion of a variant scores every kept image of a shard."""

import dagster as dg
import numpy as np
import pandas as pd
import xarray as xr

from droughtwatch_assets.core.training import predict_shard
from droughtwatch_assets.core.variants import get_variant
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import MlflowResource
from droughtwatch_assets.tracking import model_name

GROUP = "inference"
CHAMPION = "champion"
PROBABILITY_TOLERANCE = 1e-3
# Transient faults (S3 or the tracking store away for a moment) are retried; outputs are
# written atomically and only at the end, so a run that still fails leaves nothing behind.
TRANSIENT_RETRIES = dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL)


class InferenceConfig(dg.Config):
    variant: str = "baseline"
    """Whose champion scores the shard."""


def predictions_frame(
    ids: np.ndarray, probabilities: np.ndarray, name: str, version: str
) -> pd.DataFrame:
    """The earlier project's columns (ID, P_0..P_3, label, P_label) plus the model's identity."""
    label = probabilities.argmax(axis=1) if len(probabilities) else np.empty(0, np.int64)
    frame = pd.DataFrame({"ID": ids.astype(str)})
    for k in range(probabilities.shape[1]):
        frame[f"P_{k}"] = probabilities[:, k]
    frame["label"] = label.astype(np.int8)
    frame["P_label"] = probabilities[np.arange(len(label)), label] if len(label) else []
    frame["model_name"] = name
    frame["model_version"] = version
    return frame


@dg.asset(
    group_name=GROUP,
    partitions_def=shards,
    retry_policy=TRANSIENT_RETRIES,
    check_specs=[
        dg.AssetCheckSpec(
            "probabilities_sum_to_one",
            asset="batch_predictions",
            blocking=True,
            description=f"Every row's P_0..P_3 sum to 1 within {PROBABILITY_TOLERANCE}.",
        ),
        dg.AssetCheckSpec(
            "one_row_per_kept_image",
            asset="batch_predictions",
            blocking=True,
            description="As many predictions as the shard has kept (filtered) images.",
        ),
    ],
    kinds={"keras", "parquet"},
)
def batch_predictions(
    context: dg.AssetExecutionContext,
    config: InferenceConfig,
    mlflow: MlflowResource,
    filtered_images: xr.Dataset,
    spectral_indices: xr.Dataset,
):
    """Predictions for every kept image of the shard by the champion of a variant, resolved when
    the run starts: ID, P_0..P_3, label (argmax), P_label, model_name, model_version, one
    Parquet file per shard. On a labelled shard this is an evaluation too (monitoring_metrics
    computes accuracy). A champion promoted later does not rewrite these: re-scoring is an
    explicit backfill (``droughtwatch rescore``)."""
    variant = get_variant(config.variant)
    name = model_name(variant.name)
    tracking = mlflow.tracking()
    version = tracking.alias_version(variant.name, CHAMPION)
    if version is None:
        raise dg.Failure(
            f"{name} has no champion yet, so there is nothing to predict with. Train and promote "
            f"one first: `droughtwatch train {variant.name}` (or materialize trained_model and "
            f"registered_model for partition {variant.name!r}).",
            allow_retries=False,  # not transient: retrying cannot help
        )
    model = tracking.load_model(variant.name, version=version)
    probabilities, _ = predict_shard(model, filtered_images, spectral_indices, variant)
    frame = predictions_frame(filtered_images["id"].values, probabilities, name, version)

    sums = probabilities.sum(axis=1) if len(probabilities) else np.empty(0)
    bad_sums = int(np.count_nonzero(~(np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE)))
    kept = int(filtered_images.sizes["image"])
    passed = bad_sums == 0 and len(frame) == kept
    yield dg.Output(
        frame if passed else None,  # failing its checks, nothing is written
        metadata={
            "stored": passed,
            "model_name": name,
            "model_version": version,
            "predictions": len(frame),
            "predicted_label_counts": {
                str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()
            },
        },
    )
    yield dg.AssetCheckResult(
        check_name="probabilities_sum_to_one",
        passed=bad_sums == 0,
        metadata={"rows_off": bad_sums, "tolerance": PROBABILITY_TOLERANCE},
    )
    yield dg.AssetCheckResult(
        check_name="one_row_per_kept_image",
        passed=len(frame) == kept,
        metadata={"predictions": len(frame), "kept_images": kept},
    )
