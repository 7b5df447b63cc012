"""The registry: each training becomes a model version, promoted to champion only through the
gate (a blocking check), with every decision recorded."""

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.tracking import ONNX_ARTIFACT, model_name
from droughtwatch_assets.core.portable import OnnxModel, Parity, export_onnx, parity
from droughtwatch_assets.core.promotion import GateDecision, promotion_gate
from droughtwatch_assets.core.training import evaluate, shard_features
from droughtwatch_assets.core.variants import SERVING_VARIANT, get_variant
from droughtwatch_assets.defs.keys import REGISTERED_MODEL, SERVING_MODEL
from droughtwatch_assets.defs.partitions import variants
from droughtwatch_assets.defs.resources import MetricsDbResource, MlflowResource, StorageResource
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.pipeline.corpus import shard_sources

GROUP = "registry"
CHALLENGER, CHAMPION = "challenger", "champion"


class GateConfig(dg.Config):
    margin: float = 0.10
    """Macro F1 the challenger must have above always predicting the majority class."""
    tolerance: float = 0.0
    """How much worse than the champion (macro F1, same val shards) still counts as no worse."""
    accuracy_slack: float = 0.25
    """How far below the majority guess's accuracy the challenger may be (see core.promotion)."""


@dg.asset(
    group_name=GROUP,
    partitions_def=variants,
    check_specs=[
        dg.AssetCheckSpec(
            "promotion_gate",
            asset=lake.REGISTERED_MODEL,
            blocking=True,
            description="The challenger beats the majority-class baseline by the margin "
            "(macro F1) and is no worse than the champion on the same val shards.",
        )
    ],
    kinds={"mlflow"},
)
def registered_model(
    context: dg.AssetExecutionContext,
    config: GateConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
    metrics_db: MetricsDbResource,
    trained_model: dict,
):
    """A new version of ``droughtwatch-<variant>`` with the alias ``challenger``; ``champion``
    moves to it only when the promotion gate passes. Every decision, promotion or refusal, is a
    row in the monitoring database's ``promotions`` table and in this asset's metadata."""
    variant = get_variant(context.partition_key)
    tracking = mlflow.tracking()
    name = model_name(variant.name)
    champion_version = tracking.alias_version(variant.name, CHAMPION)
    val = trained_model["val_metrics"]
    version = tracking.register(
        trained_model["model_uri"],
        variant.name,
        run_id=trained_model["mlflow_run_id"],
        tags={
            "variant": variant.name,
            "features": ",".join(variant.features),
            "epochs": trained_model["epochs"],
            "corpus_fingerprint": trained_model["corpus_fingerprint"],
            "val_accuracy": f"{val['accuracy']:.4f}",
            "val_macro_f1": f"{val['macro_f1']:.4f}",
            "temperature": f"{trained_model.get('temperature', 1.0):.4f}",
            "dagster_run_id": context.run.run_id,
        },
    )
    tracking.set_alias(variant.name, CHALLENGER, version)

    # The portable form of the challenger: ONNX, with its calibration inside, checked against
    # the Keras model on val images. A version whose export disagrees is never promoted.
    onnx_parity = export_and_check_onnx(
        tracking, variant, version, trained_model, storage.lake_store(), context.log
    )

    champion_metrics = None
    if champion_version is not None:
        # The champion is measured again on exactly the challenger's val shards.
        val = shard_sources(storage.lake_store(), trained_model["val_shards"], variant)
        champion_model = tracking.load_model(variant.name, version=champion_version)
        measured, _, _ = evaluate(champion_model, val, variant)
        champion_metrics = measured.as_dict()
    decision: GateDecision = promotion_gate(
        challenger=trained_model["val_metrics"],
        champion=champion_metrics,
        majority=trained_model["majority_metrics"],
        margin=config.margin,
        tolerance=config.tolerance,
        accuracy_slack=config.accuracy_slack,
    )
    if decision.promote and not onnx_parity.ok:
        decision = dataclasses.replace(
            decision,
            promote=False,
            reason=f"{decision.reason}; refused: the ONNX export disagrees with the Keras model "
            f"(max |diff| {onnx_parity.max_abs_diff:.2e}, same argmax: "
            f"{onnx_parity.same_argmax})",
        )
    if decision.promote:
        tracking.set_alias(variant.name, CHAMPION, version)
    tracking.describe_version(
        variant.name,
        version,
        f"{variant.name}, {trained_model['epochs']} epochs on corpus "
        f"{trained_model['corpus_fingerprint']}: "
        f"{'promoted to champion' if decision.promote else 'refused'} ({decision.reason})",
        {
            "gate": "promoted" if decision.promote else "refused",
            "onnx_max_abs_diff": f"{onnx_parity.max_abs_diff:.2e}",
        },
    )
    context.log.info(f"{name} v{version}: {decision.reason}")
    metricsdb.record_promotion(
        metrics_db.engine(),
        {
            "recorded_at": dt.datetime.now(dt.UTC),
            "model_name": name,
            "variant": variant.name,
            "challenger_version": version,
            "champion_version": champion_version,
            "promoted": decision.promote,
            "metric": decision.metric,
            "challenger_value": decision.challenger,
            "champion_value": decision.champion,
            "majority_value": decision.majority,
            "challenger_accuracy": decision.challenger_accuracy,
            "majority_accuracy": decision.majority_accuracy,
            "margin": decision.margin,
            "tolerance": decision.tolerance,
            "reason": decision.reason,
            "dagster_run_id": context.run.run_id,
            "mlflow_run_id": trained_model["mlflow_run_id"],
        },
    )
    current_champion = version if decision.promote else champion_version
    yield dg.Output(
        {
            "model_name": name,
            "version": version,
            "promoted": decision.promote,
            "champion_version": current_champion,
            "reason": decision.reason,
        },
        metadata={
            "model_name": name,
            "version": version,
            "promoted": decision.promote,
            "champion_version": current_champion or "none",
            "previous_champion": champion_version or "none",
            "reason": decision.reason,
        },
    )
    yield dg.AssetCheckResult(
        check_name="promotion_gate",
        passed=decision.promote,
        description=decision.reason,
        metadata={
            "metric": decision.metric,
            "challenger": decision.challenger,
            # No champion yet: no number (a -1 would plot as a score).
            "champion": dg.MetadataValue.float(decision.champion)
            if decision.champion is not None
            else dg.MetadataValue.text("none"),
            "majority": decision.majority,
            "margin": decision.margin,
            # Reported, not gated: temperature scaling corrects it before serving (README).
            **(
                {"challenger_ece_calibrated": trained_model["val_ece_calibrated"]}
                if trained_model.get("val_ece_calibrated") is not None
                else {}
            ),
        },
    )


def export_and_check_onnx(
    tracking, variant, version: str, trained_model: dict, lake, log
) -> Parity:
    """Export the registered Keras model to ONNX (its temperature inside), compare both on up to
    512 images of the first val shard, and store the file with the training run."""
    keras_model = tracking.load_model(variant.name, version=version)
    [source] = shard_sources(lake, trained_model["val_shards"][:1], variant)
    filtered, indices = source.load()
    x, _ = shard_features(filtered, indices, variant.features, keep_unlabelled=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            keras_model,
            Path(tmp) / ONNX_ARTIFACT,
            x,
            temperature=float(trained_model.get("temperature", 1.0)),
        )
        result = parity(keras_model, OnnxModel(path), x[:512].astype("float32"))
        tracking.log_onnx(trained_model["mlflow_run_id"], path)
    log.info(
        f"ONNX export: max |diff| {result.max_abs_diff:.2e} on {result.images} val images, "
        f"same argmax: {result.same_argmax}"
    )
    return result


class ServingConfig(dg.Config):
    variant: str = SERVING_VARIANT
    """Whose champion scores new shards."""


def serving_metadata(name: str, variant: str, version: str, ui_url: str | None) -> dict:
    return {
        "model_name": name,
        "variant": variant,
        "version": version,
        **({"registry": dg.MetadataValue.url(ui_url)} if ui_url else {}),
    }


@dg.asset(
    key=SERVING_MODEL,
    group_name=GROUP,
    deps=[REGISTERED_MODEL],
    output_required=False,
    # A registered_model materialized on its own (the UI, `dagster asset materialize`) moves the
    # champion too: this follows it. training_job materializes it in the same run.
    automation_condition=dg.AutomationCondition.any_deps_updated()
    & ~dg.AutomationCondition.in_progress(),
    kinds={"mlflow"},
)
def serving_model(context: dg.AssetExecutionContext, config: ServingConfig, mlflow: MlflowResource):
    """The model that scores shards: the champion of one variant (run config `variant`,
    default baseline), pinned as a version. Its data version is `<model name>/<version>`, and
    batch_predictions depends on it, so the graph shows which model made the predictions and a
    new champion marks older predictions stale. It materializes only when the serving model
    changes (a promotion, or another `variant`): scoring again is still an explicit backfill."""
    variant = get_variant(config.variant)
    tracking = mlflow.tracking()
    name = model_name(variant.name)
    version = tracking.alias_version(variant.name, CHAMPION)
    if version is None:
        context.log.warning(f"{name} has no champion yet: nothing serves, nothing to record.")
        return
    data_version = serving_data_version(name, version)
    previous = context.instance.get_latest_materialization_event(SERVING_MODEL)
    if previous is not None and previous.tags.get(DATA_VERSION_TAG) == data_version:
        context.log.info(f"{name} v{version} still serves: nothing changed.")
        return
    context.log.info(f"{name} v{version} serves from now on.")
    yield dg.Output(
        {"model_name": name, "variant": variant.name, "version": version},
        data_version=dg.DataVersion(data_version),
        metadata=serving_metadata(
            name, variant.name, version, tracking.version_ui_url(variant.name, version)
        ),
    )


def serving_data_version(name: str, version: str) -> str:
    return f"{name}/{version}"
