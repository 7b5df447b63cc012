"""`monitor_one`, the monitoring step of one shard, called directly with hand-made inputs.

The jobs in test_asset_checks.py run it end to end; here its two checks are pinned at their
boundaries (drift exactly at the threshold, the estimate exactly at the floor), together with
what it writes to the metrics database and reports on the materialization. Every expected value
is a literal: a hand computation or a number from the README.

The shard: 10 kept images, every prediction (0.625, 0.125, 0.125, 0.125), so every predicted
label is 0, the CBPE accuracy estimate is the mean top probability 0.625 and, against a
reference that predicted (0.85, 0.15, 0, 0) on validation, the prediction drift is
sqrt((0.85 ln(0.85/0.925) + 0.15 ln 2 + ln(1/0.925)) / 2) = 0.234585 (test_asset_checks.py
works it through). All values in binary are exact where a boundary depends on them.
"""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.core.drift import reference_profile
from droughtwatch_assets.defs.monitoring.assets import monitor_one

KEY = "drops/2024-08-01/part-r-00000"
WARN = dg.AssetCheckSeverity.WARN
DRIFT = 0.234585  # to 6 decimals; the boundary tests use the exact value computed once
# Ten per-image NDVI means, one in each decile of the reference 0, 0.01, ..., 0.99: PSI 0.
NDVI = np.arange(10) / 10 + 0.05
# Every NDMI mean 0, all in the first of ten reference bins: PSI with empty bins floored at
# 1e-4 is 0.9 ln 10 + 9 (1e-4 - 0.1) ln(1e-4 / 0.1) = 2.072327 + 6.210763 = 8.283090.
NDMI_PSI = 8.283090


class StandInReferences:
    """The references of `droughtwatch-baseline` version 3, the model in the predictions: the
    variant is asked for without the registry's name prefix."""

    def __init__(self, *, val_accuracy=0.665, val_macro_f1=0.5, quality=None):
        self.val = (val_accuracy, val_macro_f1)
        self.quality = quality or {}

    def profiles(self, variant, version):
        assert (variant, version) == ("baseline", "3")
        hundred = np.arange(100) / 100
        return [0.85, 0.15, 0.0, 0.0], reference_profile(hundred), reference_profile(hundred / 2)

    def inputs(self, variant, version):
        assert (variant, version) == ("baseline", "3")
        hundred = np.arange(100) / 100
        profiles = {"ndvi": reference_profile(hundred), "ndmi": reference_profile(hundred / 2)}
        return profiles, self.quality

    def validation(self, variant, version):
        assert (variant, version) == ("baseline", "3")
        return self.val


def predictions(n=10):
    frame = pd.DataFrame({f"P_{k}": [0.625 if k == 0 else 0.125] * n for k in range(4)})
    return frame.assign(model_name="droughtwatch-baseline", model_version="3")


def indices(labels=(0,) * 10):
    return xr.Dataset(
        {
            "ndvi_mean": ("image", NDVI),
            "ndmi_mean": ("image", np.zeros(10)),
            "label": ("image", np.asarray(labels, dtype=np.int64)),
        }
    )


@pytest.fixture
def engine(tmp_path):
    engine = metricsdb.connect(f"sqlite:///{tmp_path / 'metrics.db'}")
    yield engine
    engine.dispose()


def run(engine, references, *, key=KEY, labels=(0,) * 10, **kwargs):
    kwargs.setdefault("drift_threshold", 0.25)  # the asset's default (test_asset_checks.py)
    out = monitor_one(
        key, predictions(), indices(labels), references, engine, run_id="run-1", **kwargs
    )
    [materialization, performance, drift] = out
    assert isinstance(materialization, dg.AssetMaterialization)
    return materialization, performance, drift


def exact_drift(engine, tmp_key="drops/2024-07-31/part-r-00000"):
    """The drift of the shard as computed (the float the check compares), from a first run."""
    _, _, drift = run(engine, StandInReferences(), key=tmp_key)
    value = drift.metadata["prediction_drift"].value
    assert value == pytest.approx(DRIFT, abs=1e-6)
    return value


def test_drift_exactly_at_the_threshold_passes_and_just_above_warns(engine):
    """README: the check warns when drift *exceeds* the threshold, so equal passes."""
    drift_value = exact_drift(engine)
    _, _, at = run(engine, StandInReferences(), drift_threshold=drift_value)
    assert at.passed and at.severity == WARN and at.description is None
    assert at.partition == KEY and at.check_name == "prediction_drift"
    below = math.nextafter(drift_value, 0.0)
    _, _, over = run(engine, StandInReferences(), drift_threshold=below)
    assert not over.passed and over.severity == WARN and not over.blocking
    assert over.description == f"prediction drift 0.235 > {below}"
    assert over.metadata["threshold"].value == below


@pytest.mark.parametrize(
    ("val_accuracy", "drop", "passes"),
    [
        (0.75, 0.125, True),  # floor 0.625 exactly: the estimate 0.625 is not below it
        (0.6875, 0.0625, True),  # floor 0.625 again, another margin
        (0.75, 0.12109375, False),  # floor 0.62890625, just above the estimate
        (0.665, 0.05, True),  # the README's margin: floor 0.615
        (0.685, 0.05, False),  # floor 0.635
    ],
)
def test_estimate_at_the_floor_passes_and_below_it_warns(engine, val_accuracy, drop, passes):
    """README: warns when the estimated accuracy is more than `performance_drop` below the
    validation accuracy; an estimate exactly `performance_drop` below passes."""
    _, performance, _ = run(
        engine, StandInReferences(val_accuracy=val_accuracy), performance_drop=drop
    )
    assert performance.passed is passes
    assert performance.severity == WARN and not performance.blocking
    assert performance.partition == KEY and performance.check_name == "estimated_performance"
    assert {k: v.value for k, v in performance.metadata.items()} == {
        "estimated_accuracy": 0.625,
        "val_accuracy": val_accuracy,
        "margin": drop,
    }
    if passes:
        assert performance.description is None
    else:
        assert performance.description == (
            f"estimated accuracy 0.625 < validation {val_accuracy:.3f} - {drop}"
        )


def test_the_default_margin_is_0_05(engine):
    _, passing, _ = run(engine, StandInReferences(val_accuracy=0.67))  # floor 0.62
    _, failing, _ = run(engine, StandInReferences(val_accuracy=0.68))  # floor 0.63
    assert passing.passed and not failing.passed
    assert failing.metadata["margin"].value == 0.05


def test_no_validation_accuracy_passes_and_says_there_is_nothing_to_compare(engine):
    materialization, performance, _ = run(
        engine, StandInReferences(val_accuracy=None, val_macro_f1=None)
    )
    assert performance.passed
    assert performance.description == (
        "no validation accuracy recorded for this model version: nothing to compare with"
    )
    assert performance.metadata["estimated_accuracy"].value == 0.625
    assert math.isnan(performance.metadata["val_accuracy"].value)
    assert "val_accuracy" not in materialization.metadata
    assert "val_macro_f1" not in materialization.metadata


def test_the_row_is_upserted_with_its_input_drift_and_reported(engine):
    """Every label and every prediction 0: accuracy 1. The row, its input_drift rows and the
    materialization carry the same numbers."""
    materialization, _, _ = run(engine, StandInReferences(val_accuracy=0.7, val_macro_f1=0.6))
    [row] = metricsdb.monitoring_rows(engine)
    assert row["shard_key"] == KEY and row["dagster_run_id"] == "run-1"
    assert (row["model_name"], row["model_version"]) == ("droughtwatch-baseline", "3")
    assert row["n_predictions"] == 10 and row["class_0_frac"] == 1.0
    assert row["prediction_drift"] == pytest.approx(DRIFT, abs=1e-6)
    assert row["ndvi_psi"] == 0.0 and row["ndmi_psi"] == pytest.approx(NDMI_PSI, abs=1e-6)
    assert row["accuracy"] == 1.0 and row["estimated_accuracy"] == 0.625
    assert row["moved_input"] == "ndmi"  # PSI 8.28 > 0.2; NDVI's 0 is not
    assert row["recorded_at"] is not None
    inputs = metricsdb.input_drift_rows(engine, KEY)
    assert [(r["feature"], r["kind"]) for r in inputs] == [("ndmi", "input"), ("ndvi", "input")]
    assert inputs[0]["psi"] == pytest.approx(NDMI_PSI, abs=1e-6) and inputs[1]["psi"] == 0.0

    assert materialization.asset_key == dg.AssetKey("monitoring_metrics")
    assert materialization.partition == KEY
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["model_name"] == "droughtwatch-baseline"
    assert metadata["model_version"] == "3"
    assert metadata["moved_input"] == "ndmi"
    assert metadata["psi_ndmi"] == pytest.approx(NDMI_PSI, abs=1e-6)
    assert metadata["psi_ndvi"] == 0.0
    assert (metadata["val_accuracy"], metadata["val_macro_f1"]) == (0.7, 0.6)
    assert metadata["n_predictions"] == 10 and metadata["accuracy"] == 1.0
    assert metadata["prediction_drift"] == pytest.approx(DRIFT, abs=1e-6)
    # numbers only: no strings, no None (unlabelled-only columns), no run id
    assert "dagster_run_id" not in metadata and "shard_key" not in metadata

    # scored again: the row is replaced, not duplicated
    run(engine, StandInReferences())
    assert len(metricsdb.monitoring_rows(engine)) == 1


def test_unlabelled_shard_leaves_accuracy_out_of_the_metadata(engine):
    materialization, _, _ = run(engine, StandInReferences(), labels=(-1,) * 10)
    [row] = metricsdb.monitoring_rows(engine)
    assert row["accuracy"] is None and row["macro_f1"] is None
    metadata = materialization.metadata
    assert "accuracy" not in metadata and "macro_f1" not in metadata
    assert metadata["estimated_accuracy"].value == 0.625


def test_a_moved_quality_share_is_named_before_any_input(engine):
    """A cloudy share 0.4 against 0.1 in training: a shift of 0.3, beyond 0.05, so the share
    is named even though NDMI's PSI is 8.28; nothing moved at all reports "none"."""
    references = StandInReferences(quality={"cloudy_share": 0.1})
    materialization, _, _ = run(engine, references, quality={"cloudy_share": 0.4})
    assert materialization.metadata["moved_input"].value == "cloudy_share"
    shares = [r for r in metricsdb.input_drift_rows(engine, KEY) if r["kind"] == "quality"]
    assert [(r["feature"], r["shift"]) for r in shares] == [("cloudy_share", pytest.approx(0.3))]

    class Still(StandInReferences):
        def inputs(self, variant, version):
            profiles, quality = super().inputs(variant, version)
            return {"ndvi": profiles["ndvi"]}, quality

    materialization, _, _ = run(engine, Still(), key="drops/2024-08-02/part-r-00000")
    assert materialization.metadata["moved_input"].value == "none"
