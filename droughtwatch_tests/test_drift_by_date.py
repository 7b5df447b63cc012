"""drift_by_drop_date: monitoring rows as one row per drop date, hand-computed cases."""

from __future__ import annotations

import pytest

from droughtwatch_assets.pipeline.monitoring import drift_by_drop_date


def _row(key: str, version: str, drift: float, ndvi_psi: float, accuracy: float | None) -> dict:
    return {
        "shard_key": key, "model_name": "droughtwatch-baseline", "model_version": version,
        "prediction_drift": drift, "ndvi_psi": ndvi_psi, "ndmi_psi": 0.0,
        "ndvi_wasserstein": 0.0, "ndmi_wasserstein": 0.0, "accuracy": accuracy,
    }  # fmt: skip


def test_one_row_per_drop_date_in_date_order_each_shard_at_its_latest_scoring():
    rows = [  # oldest first, as metricsdb.monitoring_rows returns them
        _row("drops/2024-08-09/part-r-00000", "1", 0.30, 0.5, None),
        _row("drops/2024-08-01/part-r-00000", "1", 0.10, 0.1, 0.6),
        _row("drops/2024-08-01/part-r-00001", "1", 0.20, 0.3, None),
        _row("val/part-r-00000", "1", 0.90, 9.0, 0.5),  # not a drop: left out
        _row("drops/2024-08-09/part-r-00000", "2", 0.05, 0.5, None),  # scored again: this counts
    ]
    summary = drift_by_drop_date(rows)
    assert [r["drop_date"] for r in summary] == ["2024-08-01", "2024-08-09"]
    first, second = summary
    assert first["shards"] == 2
    assert first["prediction_drift"] == pytest.approx(0.15)
    assert first["max_prediction_drift"] == pytest.approx(0.20)
    assert first["ndvi_psi"] == pytest.approx(0.2)
    assert first["accuracy"] == pytest.approx(0.6)  # the one labelled shard
    assert first["models"] == "droughtwatch-baseline v1"
    assert second["shards"] == 1 and second["prediction_drift"] == pytest.approx(0.05)
    assert second["accuracy"] is None and second["models"] == "droughtwatch-baseline v2"
    assert drift_by_drop_date([]) == []


def test_a_date_scored_by_two_versions_lists_both():
    """Two shards of one drop, each last scored by a different version: both are named."""
    rows = [
        _row("drops/2024-08-01/part-r-00000", "2", 0.10, 0.1, None),
        _row("drops/2024-08-01/part-r-00001", "1", 0.20, 0.3, None),
    ]
    [day] = drift_by_drop_date(rows)
    assert day["models"] == "droughtwatch-baseline v1, droughtwatch-baseline v2"
