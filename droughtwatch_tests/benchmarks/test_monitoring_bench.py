"""The monitoring benchmark's bookkeeping on made-up drops (the run itself trains a model and
takes minutes: `make bench-monitoring`)."""

from __future__ import annotations

import pytest

from droughtwatch_tests.benchmarks import monitoring as bench


def _drop(date: str, kind: str, accuracy: float, estimated: float, moved: str | None) -> dict:
    return {
        "shard_key": f"drops/{date}/part-r-00000", "kind": kind, "n_predictions": 390,
        "accuracy": accuracy, "estimated_accuracy": estimated, "macro_f1": 0.5,
        "estimated_macro_f1": 0.52, "moved_input": moved, "prediction_drift": 0.05,
        "ndvi_psi": 0.1,
    }  # fmt: skip


def test_each_kind_has_its_own_dates():
    assert bench.kind_of("drops/2025-01-01/part-r-00000", 5) == "none"
    assert bench.kind_of("drops/2025-01-05/part-r-00000", 5) == "none"
    assert bench.kind_of("drops/2025-01-06/part-r-00000", 5) is None
    assert bench.kind_of("drops/2025-01-21/part-r-00000", 5) == "dry"
    assert bench.kind_of("drops/2025-03-02/part-r-00000", 5) == "offset"


def test_summary_and_report_judge_the_targets():
    drops = [
        _drop("2025-01-01", "none", 0.70, 0.71, None),
        _drop("2025-01-02", "none", 0.70, 0.74, None),
        _drop("2025-01-21", "dry", 0.80, 0.70, "ndvi"),
        _drop("2025-02-10", "cloudy", 0.60, 0.66, "cloudy_share"),
        _drop("2025-03-02", "offset", 0.50, 0.70, "B4"),
    ]
    summary = {k["kind"]: k for k in bench.summarize(drops)}
    assert summary["none"]["mean_error"] == pytest.approx(0.025)
    assert summary["none"]["max_error"] == pytest.approx(0.04)
    assert summary["cloudy"]["named"] is True and summary["offset"]["named"] is False
    assert summary["dry"]["named"] is None  # a prior shift moves no input by design
    report = {"settings": vars(bench.BenchSettings()), "machine": "x86_64, 3.11",
              "date": "2026-12-01", "seconds": 100.0, "drops": drops}  # fmt: skip
    text = bench.format_report(report)
    assert "| none | 2 | 0.700 | 0.725 | 0.025 | 0.040 | 0.023 |" in text  # sqrt(.21/390)
    assert "| none |" in text and "mean abs. error <= 0.03: met" in text  # none: 0.025
    assert summary["cloudy"]["mean_error"] == pytest.approx(0.06)
    assert "mean abs. error <= 0.03: **not met**" in text  # dry: 0.10
    assert "shifted input named: **not met**" in text  # offset named B4, not B5
