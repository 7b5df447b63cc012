"""The training assets: the labelled corpus, and one trained Keras model per variant."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np

from droughtwatch_assets.adapters.tracking import CALIBRATION, HISTORY_PREFIX
from droughtwatch_assets.core.frameworks import filtered_stderr
from droughtwatch_assets.core.metrics import ClassificationMetrics
from droughtwatch_assets.core.training import (
    ShardSource,
    TrainingResult,
    checkpoint_key,
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


class Checkpoint:
    """The local folder where one training keeps its last epoch (Keras' BackupAndRestore) and
    its MLflow run id, so that a killed training resumes in the same MLflow run; removed once
    the model is in MLflow. No folder configured: no checkpoint."""

    RUN_FILE = "mlflow_run_id"

    def __init__(self, path: str | None):
        self.path = path

    @classmethod
    def for_training(cls, root: str | None, key: str) -> "Checkpoint":
        return cls(None if root is None else str(Path(root) / key))

    def mlflow_run_id(self) -> str | None:
        if self.path is None or not (Path(self.path) / self.RUN_FILE).exists():
            return None
        return (Path(self.path) / self.RUN_FILE).read_text().strip() or None

    def remember(self, run_id: str) -> None:
        if self.path is not None:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            (Path(self.path) / self.RUN_FILE).write_text(run_id)

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


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


def calibration_metadata(result: TrainingResult) -> dict:
    c = result.calibration
    if c is None:
        return {}
    bins = "\n".join(
        f"| {lo:.2f}-{hi:.2f} | {n} | {conf:.3f} | {acc:.3f} |"
        for lo, hi, n, conf, acc in zip(
            c.reliability.edges[:-1], c.reliability.edges[1:], c.reliability.counts,
            c.reliability.confidence, c.reliability.accuracy, strict=True,
        )
        if n
    )  # fmt: skip
    return {
        "val_ece": c.ece,
        "val_ece_calibrated": c.ece_calibrated,
        "temperature": c.temperature,
        # The reliability diagram as a table (the image is in the MLflow run).
        "reliability": dg.MetadataValue.md(
            "| confidence bin | images | mean confidence | accuracy |\n|---|---|---|---|\n" + bins
        ),
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
    manifest: CorpusManifest,
    example: np.ndarray,
    reference: dict,
) -> str:
    """What a finished training adds to its MLflow run (its parameters and per-epoch metrics
    were logged as it went)."""
    run.log_params(
        {
            "train_records": str(result.train_records),
            "val_records": str(result.val_records),
        }
    )
    run.log_metrics({"epochs_done": result.epochs_done, "stopped_early": int(result.stopped_early)})
    if result.calibration is not None:
        calibration = result.calibration.to_dict()
        run.log_metrics(
            {
                "val_ece": result.calibration.ece,
                "val_ece_calibrated": result.calibration.ece_calibrated,
                "temperature": result.calibration.temperature,
            }
        )
        run.log_dict(calibration, CALIBRATION)
        run.log_figure_reliability(calibration)
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
    tracking = mlflow.tracking()
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.partition": context.partition_key,
        "droughtwatch.variant": variant.name,
    }
    checkpoint = Checkpoint.for_training(
        storage.checkpoints, checkpoint_key(variant, manifest.fingerprint, config.max_records)
    )
    run_name = f"{variant.name}-{context.run.run_id[:8]}"
    # TensorFlow's runtime prints one harmless E-level line when Keras first builds a tf.data map
    # (fit, and MLflow's check of the input example): dropped, everything else passes.
    with (
        filtered_stderr(),
        tracking.run(run_name=run_name, tags=tags, resume=checkpoint.mlflow_run_id()) as run,
    ):
        checkpoint.remember(run.run_id)
        run.log_params({**variant.params(), "corpus_fingerprint": manifest.fingerprint})
        context.log.info(
            f"training {variant.name}: {len(train)} train and {len(val)} val shards, "
            f"{variant.epochs} epochs; MLflow run {run.url}"
        )

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            run.log_metrics({f"{HISTORY_PREFIX}{k}": v for k, v in logs.items()}, step=epoch)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
            context.log.info(f"{variant.name} epoch {epoch + 1}/{variant.epochs}: {shown}")

        result = train_variant(
            variant,
            train,
            val,
            max_records=config.max_records,
            on_epoch=on_epoch,
            checkpoint_dir=checkpoint.path,
        )
        if result.resumed_from:
            context.log.info(f"resumed from the checkpoint of epoch {result.resumed_from}")
        if result.stopped_early:
            context.log.info(
                f"stopped early after {result.epochs_done} epochs: validation loss had not "
                f"improved for {variant.early_stopping_patience}"
            )
        reference = training_reference(lake, manifest.train, result.val_metrics.confusion)
        model_uri = log_training(run, result, manifest, input_example(val, variant), reference)
        run_id, run_url = run.run_id, run.url
    checkpoint.remove()  # the model is in MLflow: nothing left to resume
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
        "temperature": result.calibration.temperature if result.calibration else 1.0,
        "val_ece_calibrated": result.calibration.ece_calibrated if result.calibration else None,
    }
    return dg.Output(
        value,
        metadata={
            **metrics_metadata(result.val_metrics),
            "majority_val_accuracy": result.majority.accuracy,
            "train_records": result.train_records,
            "epochs": variant.epochs,
            "epochs_done": result.epochs_done,
            **calibration_metadata(result),
            "resumed_from_epoch": result.resumed_from,
            "stopped_early": result.stopped_early,
            "mlflow_run": dg.MetadataValue.url(run_url) if run_url.startswith("http") else run_url,
            "mlflow_run_id": run_id,
            "corpus_fingerprint": manifest.fingerprint,
        },
    )
