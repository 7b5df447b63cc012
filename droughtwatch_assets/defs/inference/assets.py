"""batch_predictions: the champion of a variant scores every kept image of a shard."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import xarray as xr

from droughtwatch_assets.adapters.storage import Store
from droughtwatch_assets.adapters.tracking import Tracking, model_name
from droughtwatch_assets.core.calibration import apply_temperature
from droughtwatch_assets.core.portable import OnnxModel
from droughtwatch_assets.core.training import predict_shards
from droughtwatch_assets.core.variants import Variant
from droughtwatch_assets.defs import checks as shard_checks
from droughtwatch_assets.defs.keys import FILTERED, INDICES, PREDICTIONS, SERVING_MODEL
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.pipeline import lake

GROUP = "inference"
CHAMPION = "champion"
PROBABILITY_TOLERANCE = 1e-3

SPEC = dg.AssetSpec(
    PREDICTIONS,
    deps=[FILTERED, INDICES, SERVING_MODEL],
    description="Predictions for every kept image of the shard by the serving model (the "
    "version serving_model last recorded; run config `variant` scores with another variant's "
    "champion instead): ID, P_0..P_3 (calibrated: the model's probabilities temperature-scaled "
    "as fitted on its validation shards), label (argmax), P_label, model_name, model_version, one "
    "Parquet file per shard. On a labelled shard this is an evaluation too (monitoring_metrics "
    "computes accuracy). A new serving model marks these stale but does not rewrite them: "
    "re-scoring is an explicit backfill (`droughtwatch score --again`, or rescore_job over a "
    "partition selection). The drop sensor scores shards under drops/ only; train/ and val/ "
    "partitions stay missing here unless someone scores them (`droughtwatch score --prefix "
    "val/` measures the champion on labelled shards).",
    group_name=GROUP,
    kinds={"keras", "parquet"},
    partitions_def=shards,
    skippable=True,
)
CHECKS = {
    "probabilities_sum_to_one": f"Every row's P_0..P_3 sum to 1 within {PROBABILITY_TOLERANCE}.",
    "one_row_per_kept_image": "As many predictions as the shard has kept (filtered) images.",
}
CHECK_SPECS = shard_checks.specs(lake.BATCH_PREDICTIONS, CHECKS, set(CHECKS))


class NoChampion(RuntimeError):
    """The variant has no champion: nothing to predict with (not transient)."""


class Champion:
    """The champion of a variant, resolved once per run and loaded on first use."""

    def __init__(
        self,
        tracking: Tracking,
        variant: Variant,
        version: str | None = None,
        model_format: str = "onnx",
    ):
        """The given version of the variant's model, else its champion now; scored from its
        ONNX export (onnxruntime, no TensorFlow) or, with `model_format` "keras" or for a
        version registered before exports existed, from the Keras model."""
        if model_format not in ("onnx", "keras"):
            raise ValueError(f"model_format must be 'onnx' or 'keras', got {model_format!r}")
        self.model_format = model_format
        self.served_format: str | None = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self.variant = variant
        self.name = model_name(variant.name)
        self.version = version or tracking.alias_version(variant.name, CHAMPION)
        self._tracking = tracking
        self._model = None
        self._temperature: float | None = None

    def check(self) -> None:
        if self.version is None:
            raise NoChampion(
                f"{self.name} has no champion yet, so there is nothing to predict with. Train and "
                f"promote one first: `droughtwatch train {self.variant.name}` (or materialize "
                f"trained_model and registered_model for partition {self.variant.name!r})."
            )

    @property
    def model(self):
        if self._model is None:
            self.check()
            assert self.version is not None
            if self.model_format == "onnx":
                self._folder = tempfile.TemporaryDirectory(prefix="droughtwatch-onnx-")
                path = self._tracking.download_onnx(
                    self.variant.name, self.version, Path(self._folder.name)
                )
                if path is not None:
                    onnx_model = OnnxModel(path)
                    self._model, self._temperature = onnx_model, onnx_model.temperature
                    self.served_format = "onnx"
            if self._model is None:
                self._model = self._tracking.load_model(self.variant.name, version=self.version)
                self.served_format = "keras"
        return self._model

    @property
    def temperature(self) -> float:
        """The version's calibration (1.0 for a model trained before calibration existed)."""
        if self._temperature is None:
            self.model  # an ONNX export carries its own  # noqa: B018
        if self._temperature is None:
            self.check()
            assert self.version is not None
            self._temperature = self._tracking.temperature(self.variant.name, self.version)
        return self._temperature

    def predict(self, shards_: Sequence[tuple[xr.Dataset, xr.Dataset]]) -> list[np.ndarray]:
        """Calibrated class probabilities for each (filtered images, indices) pair, scored
        together: the model's, temperature-scaled as fitted on its validation shards."""
        raw = predict_shards(self.model, shards_, self.variant)
        return [apply_temperature(p, self.temperature) if len(p) else p for p in raw]


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


def store_predictions(
    key: str,
    filtered: xr.Dataset,
    probabilities: np.ndarray,
    champion: Champion,
    lake_store: Store,
) -> tuple[pd.DataFrame | None, list]:
    """Check one shard's predictions and, when both blocking checks pass, write its Parquet file;
    the frame (None when it was not written) and the shard's events."""
    assert champion.version is not None
    sums = probabilities.sum(axis=1) if len(probabilities) else np.empty(0)
    bad_sums = int(np.count_nonzero(~(np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE)))
    kept = int(filtered.sizes["image"])
    # Both checks see the probabilities as they came: a frame of the kept images' ids cannot
    # even be built from a wrong number of rows.
    results = [
        shard_checks.evaluation(
            lake.BATCH_PREDICTIONS,
            "probabilities_sum_to_one",
            key,
            passed=bad_sums == 0,
            blocking=True,
            metadata={"rows_off": bad_sums, "tolerance": PROBABILITY_TOLERANCE},
        ),
        shard_checks.evaluation(
            lake.BATCH_PREDICTIONS,
            "one_row_per_kept_image",
            key,
            passed=len(probabilities) == kept,
            blocking=True,
            metadata={"predictions": len(probabilities), "kept_images": kept},
        ),
    ]
    if not shard_checks.blocking_passed(results):
        return None, results  # failing its checks, nothing is written
    frame = predictions_frame(filtered["id"].values, probabilities, champion.name, champion.version)
    url, size = lake.write(lake_store, lake.BATCH_PREDICTIONS, key, frame)
    materialization = dg.AssetMaterialization(
        asset_key=PREDICTIONS,
        partition=key,
        metadata={
            "model_name": champion.name,
            "model_version": champion.version,
            "temperature": champion.temperature,
            "model_format": champion.served_format or champion.model_format,
            "predictions": len(frame),
            "predicted_label_counts": {
                str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()
            },
            "path": dg.MetadataValue.path(url),
            "stored_bytes": size,
        },
    )
    return frame, [materialization, *results]
