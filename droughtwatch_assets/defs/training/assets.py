"""The training assets: the labelled corpus, and one trained Keras model per variant."""

import dagster as dg
import numpy as np

from droughtwatch_assets.core.metrics import ClassificationMetrics
from droughtwatch_assets.core.training import (
    ShardSource,
    TrainingResult,
    shard_features,
    train_variant,
)
from droughtwatch_assets.core.variants import get_variant, with_overrides
from droughtwatch_assets.defs.keys import FILTERED, INDICES
from droughtwatch_assets.defs.partitions import variants
from droughtwatch_assets.defs.resources import MlflowResource, StorageResource
from droughtwatch_assets.pipeline.corpus import CorpusManifest, corpus_manifest, shard_sources
from droughtwatch_assets.pipeline.monitoring import REFERENCE_ARTIFACT, training_reference

GROUP = "training"


@dg.asset(
    group_name=GROUP,
    deps=[
        dg.AssetDep(FILTERED, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(INDICES, partition_mapping=dg.AllPartitionMapping()),
    ],
    # Re-listed whenever a shard's ingest lands: cheap (one listing per split), and its data
    # version (the fingerprint) tells the retrain sensor whether anything changed.
    automation_condition=dg.AutomationCondition.any_deps_updated()
    & ~dg.AutomationCondition.in_progress(),
    kinds={"json"},
)
def training_corpus(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.Output:
    """Which labelled shards training may use: train/ and val/ shards whose filtered images and
    indices passed their checks (only those reach the lake). Reads no pixels."""
    manifest = corpus_manifest(storage.lake_store())
    context.log.info(
        f"{len(manifest.train)} train and {len(manifest.val)} val shards, "
        f"fingerprint {manifest.fingerprint}"
    )
    return dg.Output(
        manifest.to_dict(),
        data_version=dg.DataVersion(manifest.fingerprint),
        metadata={
            "train_shards": len(manifest.train),
            "val_shards": len(manifest.val),
            "fingerprint": manifest.fingerprint,
        },
    )


class TrainingConfig(dg.Config):
    epochs: int | None = None
    """Override the variant's epochs (None: the variant's own)."""
    max_records: int | None = None
    """Cap the records read from train and from val (None: all); for tests and quick tries."""


def metrics_metadata(metrics: ClassificationMetrics) -> dict:
    header = "| true \\ predicted | 0 | 1 | 2 | 3 |\n|---|---|---|---|---|\n"
    rows = "\n".join(
        f"| {label} | " + " | ".join(str(v) for v in row) + " |"
        for label, row in enumerate(metrics.confusion)
    )
    return {
        "val_accuracy": metrics.accuracy,
        "val_macro_f1": metrics.macro_f1,
        "val_records": metrics.n,
        **{f"precision_{k}": v for k, v in enumerate(metrics.precision)},
        **{f"recall_{k}": v for k, v in enumerate(metrics.recall)},
        "confusion_matrix": dg.MetadataValue.md(header + rows),
    }


def input_example(sources: list[ShardSource], variant) -> np.ndarray:
    """A few raw records of the first shard: what the model is served (bands 0..255, index
    codes -127..127), for the MLflow signature and input example."""
    filtered, indices = sources[0].load()
    x, _ = shard_features(filtered, indices, variant.features)
    return x[:2].astype("float32")


def log_training(
    run,
    result: TrainingResult,
    variant,
    manifest: CorpusManifest,
    example: np.ndarray,
    reference: dict,
) -> str:
    run.log_params(variant.params())
    run.log_params(
        {
            "train_records": str(result.train_records),
            "val_records": str(result.val_records),
            "corpus_fingerprint": manifest.fingerprint,
        }
    )
    run.log_history(result.history)
    run.log_metrics({f"val_{k}": v for k, v in result.val_metrics.as_dict().items()})
    run.log_metrics({f"majority_{k}": v for k, v in result.majority.as_dict().items()})
    run.log_figure_confusion(result.val_metrics.confusion)
    run.log_dict(
        {
            "train": result.train_shards,
            "val": result.val_shards,
            "fingerprint": manifest.fingerprint,
        },
        "shards.json",
    )
    run.log_dict(reference, REFERENCE_ARTIFACT)
    return run.log_keras_model(result.model, input_example=example)


@dg.asset(
    group_name=GROUP,
    partitions_def=variants,
    pool="training",
    kinds={"keras", "mlflow"},
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
    training_corpus: dict,
) -> dg.Output:
    """A Keras model for one variant, trained on every usable train/ shard and validated on the
    val/ shards, seeded and reproducible on CPU. Everything goes to MLflow: the whole variant,
    per-epoch losses and accuracies, per-class precision and recall, a confusion-matrix image,
    the model with its signature, the Dagster run and the shards used, and the model's
    monitoring reference (``reference.json``: its predicted-label distribution on val and the
    per-image NDVI and NDMI distributions of its training shards)."""
    variant = with_overrides(get_variant(context.partition_key), epochs=config.epochs)
    manifest = CorpusManifest.from_dict(training_corpus)
    lake = storage.lake_store()
    train = shard_sources(lake, manifest.train, variant)
    val = shard_sources(lake, manifest.val, variant)
    if not train or not val:
        raise dg.Failure(
            f"training {variant.name} needs materialized train/ and val/ shards; the corpus has "
            f"{len(train)} train and {len(val)} val shards. Ingest some first "
            "(droughtwatch discover --materialize, or the drop sensor)."
        )
    context.log.info(
        f"training {variant.name}: {len(train)} train and {len(val)} val shards, "
        f"{variant.epochs} epochs"
    )
    result = train_variant(variant, train, val, max_records=config.max_records)
    tracking = mlflow.tracking()
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.partition": context.partition_key,
        "droughtwatch.variant": variant.name,
    }
    with tracking.run(run_name=f"{variant.name}-{context.run.run_id[:8]}", tags=tags) as run:
        reference = training_reference(lake, manifest.train, result.val_metrics.confusion)
        model_uri = log_training(
            run, result, variant, manifest, input_example(val, variant), reference
        )
        run_id, run_url = run.run_id, run.url
    value = {
        "variant": variant.name,
        "mlflow_run_id": run_id,
        "model_uri": model_uri,
        "val_metrics": result.val_metrics.as_dict(),
        "majority_metrics": result.majority.as_dict(),
        "train_records": result.train_records,
        "val_records": result.val_records,
        "train_shards": result.train_shards,
        "val_shards": result.val_shards,
        "corpus_fingerprint": manifest.fingerprint,
        "epochs": variant.epochs,
    }
    return dg.Output(
        value,
        metadata={
            **metrics_metadata(result.val_metrics),
            "majority_val_accuracy": result.majority.accuracy,
            "train_records": result.train_records,
            "epochs": variant.epochs,
            "mlflow_run": dg.MetadataValue.url(run_url) if run_url.startswith("http") else run_url,
            "mlflow_run_id": run_id,
            "corpus_fingerprint": manifest.fingerprint,
        },
    )
