"""Drift metrics against hand-computed examples, and the monitoring row."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.core import drift
from droughtwatch_assets.core.drift import (
    JS_DISTANCE_MAX,
    TRAINING_LABEL_FRACTIONS,
    ReferenceProfile,
    js_distance,
    label_distribution,
    monitoring_row,
    prediction_summary,
    psi,
    reference_profile,
    wasserstein,
)

# 0..99: the deciles (numpy linear interpolation) are 9.9, 19.8, ..., 89.1, so every PSI bin
# holds exactly ten of the integers 10k..10k+9 and the reference fractions are all 0.1.
HUNDRED = np.arange(100, dtype=np.float64)


def _one_hot(labels: list[int]) -> np.ndarray:
    out = np.full((len(labels), 4), 0.1)
    out[np.arange(len(labels)), labels] = 0.7
    return out


# label_distribution ----------------------------------------------------------------------------


def test_label_distribution_counts_fractions():
    dist = label_distribution(np.array([0, 0, 1, 3]))
    np.testing.assert_allclose(dist, [0.5, 0.25, 0.0, 0.25])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([], dtype=np.int64), "empty"),
        (np.array([0, 4]), r"labels\[1\] = 4"),
        (np.array([0.0, 1.0]), "integer"),
        (np.zeros((2, 2), dtype=np.int64), "1-D"),
    ],
)
def test_label_distribution_rejects_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        label_distribution(labels)


# js_distance ------------------------------------------------------------------------------------


def test_js_distance_of_identical_distributions_is_zero():
    assert js_distance([0.6, 0.15, 0.15, 0.1], [0.6, 0.15, 0.15, 0.1]) == 0.0
    # Inputs are normalised: counts and fractions of the same distribution are identical.
    assert js_distance([6, 1.5, 1.5, 1], [0.6, 0.15, 0.15, 0.1]) == pytest.approx(0.0, abs=1e-9)


def test_js_distance_of_disjoint_distributions_is_sqrt_ln2():
    assert js_distance([1, 0], [0, 1]) == pytest.approx(math.sqrt(math.log(2)))
    assert round(JS_DISTANCE_MAX, 7) == 0.8325546


def test_js_distance_worked_example():
    # m = (0.7, 0.3); KL(p||m) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.0871769
    # KL(q||m) = 0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3) = 0.1163215; JSD = 0.1017492
    kl_p = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_q = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    assert math.sqrt((kl_p + kl_q) / 2) == pytest.approx(0.318982, abs=1e-6)
    assert js_distance([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.318982, abs=1e-6)
    assert js_distance([0.9, 0.1], [0.5, 0.5]) == pytest.approx(0.318982, abs=1e-6)


def test_js_distance_handles_zero_bins_on_one_side():
    # p = (1, 0), q = (0.5, 0.5): m = (0.75, 0.25); KL(p||m) = ln(4/3), KL(q||m) =
    # 0.5 ln(2/3) + 0.5 ln 2; the 0 * log 0 term of p contributes nothing.
    expected = math.sqrt((math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2)
    assert js_distance([1, 0], [0.5, 0.5]) == pytest.approx(expected)
    assert math.isfinite(js_distance([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]))


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, 0.5], [1, 0, 0], "bins"),
        ([0, 0], [0.5, 0.5], "sums to 0"),
        ([-0.1, 1.1], [0.5, 0.5], "non-negative"),
        ([float("nan"), 1], [0.5, 0.5], "finite"),
        ([], [], "non-empty"),
    ],
)
def test_js_distance_rejects_non_distributions(p, q, message):
    with pytest.raises(ValueError, match=message):
        js_distance(p, q)


# reference profiles, PSI, Wasserstein -----------------------------------------------------------


def test_reference_profile_of_0_to_99():
    ref = reference_profile(HUNDRED)
    assert ref.count == 100
    assert len(ref.quantiles) == 101
    assert ref.quantiles[0] == 0.0 and ref.quantiles[-1] == 99.0
    assert ref.quantiles[50] == pytest.approx(49.5)
    assert ref.bin_edges[0] == -math.inf and ref.bin_edges[-1] == math.inf
    np.testing.assert_allclose(ref.bin_edges[1:-1], [9.9 * k for k in range(1, 10)])
    np.testing.assert_allclose(ref.bin_fractions, [0.1] * 10)


def test_reference_profile_merges_tied_deciles():
    # 80 % zeros: the first eight deciles are all 0, so one edge remains there.
    values = np.array([0.0] * 80 + list(range(1, 21)), dtype=np.float64)
    ref = reference_profile(values)
    assert ref.n_bins < 10
    assert sum(ref.bin_fractions) == pytest.approx(1.0)
    assert ref.bin_fractions[0] == 0.0 and ref.bin_fractions[1] == pytest.approx(0.8)
    assert psi(ref, values) == pytest.approx(0.0)


def test_reference_profile_round_trips_through_strict_json():
    ref = reference_profile(np.random.default_rng(0).normal(0.25, 0.1, 500))
    text = json.dumps(ref.to_dict(), allow_nan=False)  # the infinite outer edges are not stored
    assert ReferenceProfile.from_dict(json.loads(text)) == ref


def test_reference_profile_rejects_bad_input():
    with pytest.raises(ValueError, match=r"reference values\[1\] = nan"):
        reference_profile(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        reference_profile(np.array([]))
    with pytest.raises(ValueError, match="missing fields"):
        ReferenceProfile.from_dict({"quantiles": [0.0] * 101})
    good = reference_profile(HUNDRED).to_dict()
    with pytest.raises(ValueError, match="101 quantiles"):
        ReferenceProfile.from_dict({**good, "quantiles": [0.0, 1.0]})
    with pytest.raises(ValueError, match="sum to 1"):
        ReferenceProfile.from_dict({**good, "bin_fractions": [0.2] * 10})


def test_reference_profile_with_one_bin_is_allowed_and_never_drifts():
    """n_bins = 1 is the smallest valid profile: one bin over everything, fraction 1, so PSI is
    0 whatever the shard; n_bins = 0 is refused."""
    one = reference_profile(HUNDRED, n_bins=1)
    assert one.bin_edges == (-np.inf, np.inf) and one.bin_fractions == (1.0,)
    assert psi(one, np.array([5.0, 500.0])) == 0.0
    with pytest.raises(ValueError, match="n_bins"):
        reference_profile(HUNDRED, n_bins=0)


def test_a_corrupt_reference_is_refused_for_each_reason_alone():
    """What a stored profile must be, one broken property at a time: quantiles that dip once
    between neighbours, edges that do not start at -inf (but end at +inf) or the reverse,
    a repeated edge, a count of 0. A profile of a single value (count 1) is fine."""
    good = reference_profile(HUNDRED)
    quantiles = list(good.quantiles)
    quantiles[1], quantiles[2] = quantiles[2], quantiles[1]  # one dip, neighbours only
    with pytest.raises(ValueError, match="non-decreasing"):
        dataclasses.replace(good, quantiles=tuple(quantiles))
    edges = good.bin_edges
    for broken in ((0.0, *edges[1:]), (*edges[:-1], 1e9)):
        with pytest.raises(ValueError, match="from -inf to \\+inf"):
            dataclasses.replace(good, bin_edges=broken)
    repeated = (*edges[:2], edges[1], *edges[3:])  # same length, one edge twice
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(good, bin_edges=repeated)
    with pytest.raises(ValueError, match="count must be positive, got 0"):
        dataclasses.replace(good, count=0)
    single = reference_profile(np.array([0.5]))
    assert single.count == 1 and dataclasses.replace(good, count=1).count == 1


def test_psi_and_wasserstein_of_the_reference_itself_are_zero():
    values = np.random.default_rng(1).normal(0.3, 0.1, 1000)
    ref = reference_profile(values)
    assert psi(ref, values) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein(ref, values) == pytest.approx(0.0, abs=1e-12)


def test_psi_worked_example():
    # Current fractions per decile bin: 0.2, 0.2, 0.1 x 4, 0.05 x 4 against 0.1 each:
    # 2 (0.1 ln 2) + 4 * 0 + 4 (-0.05 ln 0.5) = 0.4 ln 2 = 0.2772589.
    current = np.array([1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 31, 32, 41, 42, 51, 52, 61, 71, 81, 91])
    assert 0.4 * math.log(2) == pytest.approx(0.277259, abs=1e-6)
    assert psi(reference_profile(HUNDRED), current) == pytest.approx(0.277259, abs=1e-6)


def test_psi_floors_empty_bins_with_epsilon():
    # Half the values in the first bin, half in the last, eight bins empty:
    # 2 (0.4 ln 5) + 8 (1e-4 - 0.1) ln(1e-4 / 0.1) = 0.8 ln 5 + 0.7992 ln 1000 = 6.808228
    current = np.array([5.0] * 50 + [95.0] * 50)
    expected = 0.8 * math.log(5) + 8 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert expected == pytest.approx(6.808228, abs=1e-6)
    assert psi(reference_profile(HUNDRED), current) == pytest.approx(6.808228, abs=1e-6)
    # A larger floor weighs empty bins less.
    assert psi(reference_profile(HUNDRED), current, epsilon=1e-2) < 6.0


def test_psi_rejects_bad_values():
    ref = reference_profile(HUNDRED)
    with pytest.raises(ValueError, match=r"values\[2\] = inf"):
        psi(ref, np.array([1.0, 2.0, np.inf]))
    with pytest.raises(ValueError, match="epsilon"):
        psi(ref, HUNDRED, epsilon=0)


def test_wasserstein_of_a_shifted_sample_is_the_shift():
    values = np.random.default_rng(2).normal(0.25, 0.1, 2000)
    ref = reference_profile(values)
    assert wasserstein(ref, values + 0.3) == pytest.approx(0.3, abs=1e-9)
    assert wasserstein(ref, values - 0.05) == pytest.approx(0.05, abs=1e-9)
    # A fresh sample of the same distribution is close, far closer than the shift.
    fresh = np.random.default_rng(3).normal(0.25, 0.1, 2000)
    assert wasserstein(ref, fresh) < 0.02


def test_wasserstein_grid_approximation_worked_example():
    # Reference quantiles are u itself (values 0, 0.01, ..., 1); a constant 0.5 sample has
    # Q_cur = 0.5. Exact W1 = integral |u - 0.5| du = 0.25; the 101-point mean is
    # 2 (1 + ... + 50) / (100 * 101) = 2550 / 10100 = 0.2524752.
    ref = reference_profile(np.arange(101) / 100)
    assert wasserstein(ref, np.full(7, 0.5)) == pytest.approx(2550 / 10100)


# prediction summary and the monitoring row ------------------------------------------------------


def test_prediction_summary_counts_nan_rows_as_missing():
    probs = _one_hot([0, 0, 2, 1, 0])
    probs[3, 2] = np.nan
    summary = prediction_summary(probs)
    assert summary.n == 5
    assert summary.share_missing_values == pytest.approx(0.2)
    assert summary.class_fracs == pytest.approx((0.75, 0.0, 0.25, 0.0))
    assert summary.most_common_percentage == pytest.approx(75.0)


def test_prediction_summary_all_missing_and_bad_shapes():
    summary = prediction_summary(np.full((3, 4), np.nan))
    assert summary.share_missing_values == 1.0
    assert summary.class_fracs == (0.0, 0.0, 0.0, 0.0)
    assert summary.most_common_percentage == 0.0
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        prediction_summary(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="empty"):
        prediction_summary(np.zeros((0, 4)))


NDVI_REF = reference_profile(HUNDRED / 100)
NDMI_REF = reference_profile(HUNDRED / 200)


def _row(**overrides) -> dict:
    kwargs = {
        "shard_key": "2024-08-07/part-r-00000",
        "model_name": "droughtwatch-nd",
        "model_version": "3",
        "probabilities": _one_hot([0, 0, 1, 2]),
        "reference_labels_dist": [0.5, 0.25, 0.25, 0.0],
        "ndvi_means": np.array([0.01, 0.02, 0.03, 0.04]),  # all in the reference's first bin
        "ndmi_means": np.array([0.2, 0.2, 0.2, 0.2]),
        "ndvi_reference": NDVI_REF,
        "ndmi_reference": NDMI_REF,
        "true_labels": np.array([0, 1, 1, 2]),
        "dagster_run_id": "run-1",
    }
    return monitoring_row(**{**kwargs, **overrides})


def test_monitoring_row_every_field():
    row = _row()
    expected_columns = {
        c.name
        for c in metricsdb.monitoring_metrics.columns
        # moved_input comes from input_drift, which monitor_one adds beside the row
        if c.name not in ("id", "recorded_at", "moved_input")
    }
    assert set(row) == expected_columns
    assert row["shard_key"] == "2024-08-07/part-r-00000"
    assert row["model_name"] == "droughtwatch-nd"
    assert row["model_version"] == "3"
    assert row["dagster_run_id"] == "run-1"
    assert row["n_predictions"] == 4
    assert [row[f"class_{k}_frac"] for k in range(4)] == [0.5, 0.25, 0.25, 0.0]
    assert row["most_common_percentage"] == 50.0
    assert row["share_missing_values"] == 0.0
    # The shard's predicted-label distribution equals the reference.
    assert row["prediction_drift"] == pytest.approx(0.0, abs=1e-9)
    # NDVI: every value in the first reference bin (fraction 1 against 0.1), nine bins empty
    # (floored at epsilon = 1e-4).
    ndvi_psi = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert row["ndvi_psi"] == pytest.approx(ndvi_psi)
    # Reference quantile at u is 0.99 u; the current quantiles run 0.01 -> 0.04 linearly.
    u = np.linspace(0, 1, 101)
    assert row["ndvi_wasserstein"] == pytest.approx(np.mean(np.abs(0.99 * u - (0.01 + 0.03 * u))))
    # NDMI: a constant 0.2 lies in the reference bin [0.198, 0.2475): same PSI shape.
    assert row["ndmi_psi"] == pytest.approx(ndvi_psi)
    assert row["ndmi_wasserstein"] == pytest.approx(np.mean(np.abs(0.495 * u - 0.2)))
    # Predicted 0, 0, 1, 2 against true 0, 1, 1, 2: 3 of 4 right. Class 0: P 1/2, R 1;
    # class 1: P 1, R 1/2 (F1 2/3 each); class 2: F1 1; class 3 absent: F1 0 -> 7/12.
    assert row["accuracy"] == 0.75
    assert row["macro_f1"] == pytest.approx(7 / 12)
    assert all(isinstance(v, float) for k, v in row.items() if k.endswith(("_frac", "_psi")))


def test_monitoring_row_drift_against_the_training_distribution():
    row = _row(probabilities=_one_hot([3, 3, 3, 3]), reference_labels_dist=TRAINING_LABEL_FRACTIONS)
    expected = js_distance(TRAINING_LABEL_FRACTIONS, [0, 0, 0, 1])
    assert row["prediction_drift"] == pytest.approx(expected)
    assert row["prediction_drift"] > 0.25  # an all-class-3 shard trips the dashboard's alert
    assert sum(TRAINING_LABEL_FRACTIONS) == pytest.approx(1.0)
    assert TRAINING_LABEL_FRACTIONS[0] == pytest.approx(0.600, abs=1e-3)


@pytest.mark.parametrize("labels", [None, np.array([-1, -1, -1, -1])])
def test_monitoring_row_unlabelled_has_no_accuracy(labels):
    row = _row(true_labels=labels)
    assert row["accuracy"] is None and row["macro_f1"] is None
    assert row["n_predictions"] == 4


def test_monitoring_row_partly_labelled_uses_labelled_rows_with_predictions():
    probs = _one_hot([0, 0, 1, 2])
    probs[1] = np.nan
    row = _row(probabilities=probs, true_labels=np.array([0, 0, -1, 1]))
    # Row 1 has no prediction, row 2 no label: rows 0 (right) and 3 (wrong) remain.
    assert row["accuracy"] == 0.5
    assert row["share_missing_values"] == 0.25
    assert [row[f"class_{k}_frac"] for k in range(4)] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])


def test_monitoring_row_all_missing_reports_maximum_drift():
    row = _row(probabilities=np.full((4, 4), np.nan))
    assert row["share_missing_values"] == 1.0
    assert row["prediction_drift"] == JS_DISTANCE_MAX
    assert row["accuracy"] is None
    # nothing scored, so nothing to estimate from
    assert row["estimated_accuracy"] is None and row["estimated_macro_f1"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"true_labels": np.array([0, 1])}, "one label per prediction row"),
        ({"true_labels": np.array([0, 1, 5, 2])}, r"y_true\[2\] = 5"),
        ({"ndvi_means": np.array([0.1, np.nan])}, r"ndvi_means\[1\] = nan"),
        ({"ndmi_means": np.array([])}, "ndmi_means is empty"),
        ({"reference_labels_dist": [1.0, 0.0]}, "bins"),
        ({"probabilities": np.zeros((4, 3))}, r"shape \(n, 4\)"),
    ],
)
def test_monitoring_row_bad_input_names_the_shard(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        _row(**overrides)
    assert "shard 2024-08-07/part-r-00000" in str(info.value)


def test_module_imports_no_orchestration():
    tree = ast.parse(Path(drift.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "numpy" in imported
    assert not {m for m in imported if m.split(".")[0] in ("dagster", "boto3")}


def test_input_drift_names_the_input_that_moved():
    from droughtwatch_assets.core.drift import input_drift, most_moved, reference_profile

    rng = np.random.default_rng(5)
    reference = {f: reference_profile(rng.normal(100, 10, 5000)) for f in ("B4", "B5", "ndvi")}
    values = {
        "B4": rng.normal(100, 10, 300),
        "B5": rng.normal(130, 10, 300),  # a sensor offset of 3 standard deviations
        "ndvi": rng.normal(100, 10, 300),
    }
    quality_reference = {"cloudy_share": 0.06, "blank_share": 0.02}
    rows = input_drift(reference, values, quality_reference, {"cloudy_share": 0.06,
                                                               "blank_share": 0.03})  # fmt: skip
    assert [r["feature"] for r in rows][0] == "B5" and rows[0]["psi"] > 1.0
    assert all(r["psi"] < 0.1 for r in rows if r["feature"] in ("B4", "ndvi"))
    assert rows[0]["shard_value"] == pytest.approx(130, abs=2)
    assert rows[0]["reference_value"] == pytest.approx(100, abs=1)
    quality = {r["feature"]: r for r in rows if r["kind"] == "quality"}
    assert quality["blank_share"]["shift"] == pytest.approx(0.01)
    assert most_moved(rows) == "B5"

    # A quality share more than 0.05 off is the cause to name, even when bands moved with it.
    cloudy = input_drift(reference, values, quality_reference, {"cloudy_share": 0.30,
                                                                "blank_share": 0.02})  # fmt: skip
    assert most_moved(cloudy) == "cloudy_share"
    calm = {f: rng.normal(100, 10, 300) for f in reference}
    assert most_moved(input_drift(reference, calm, quality_reference, quality_reference)) is None
    # A feature the reference lacks (a model trained before band means existed) is skipped.
    assert {r["feature"] for r in input_drift({}, values)} == set()


def test_input_drift_rows_by_hand():
    """One input whose shard equals its reference (PSI 0, Wasserstein 0) and two quality shares,
    one 0.3 cloudier than in training: rows in the input_drift table's shape, the most moved
    first, and the share named as what moved (beyond QUALITY_SHIFT 0.05, the larger shift)."""
    from droughtwatch_assets.core.drift import input_drift, most_moved

    rows = input_drift(
        {"B5": reference_profile(HUNDRED), "B7": reference_profile(HUNDRED)},
        {"B5": HUNDRED, "NDVI": HUNDRED},  # B7 not in the shard, NDVI not in the reference
        {"cloudy_share": 0.1, "blank_share": 0.0, "evi_guarded_share": 0.0},
        {"cloudy_share": 0.4, "blank_share": 0.08},  # no EVI-guarded share measured
    )
    assert [(r["feature"], r["kind"]) for r in rows] == [
        ("B5", "input"), ("cloudy_share", "quality"), ("blank_share", "quality"),
    ]  # fmt: skip
    b5, cloudy, blank = rows
    assert b5["psi"] == pytest.approx(0.0, abs=1e-9)
    assert b5["wasserstein"] == pytest.approx(0.0, abs=1e-9)
    assert b5["shard_value"] == pytest.approx(49.5) and b5["shift"] is None
    assert b5["reference_value"] == pytest.approx(49.5, abs=0.01)
    assert cloudy == {
        "feature": "cloudy_share", "kind": "quality", "psi": None, "wasserstein": None,
        "shard_value": 0.4, "reference_value": 0.1, "shift": pytest.approx(0.3),
    }  # fmt: skip
    assert blank["shift"] == pytest.approx(0.08)
    assert most_moved(rows) == "cloudy_share"  # 0.3 > 0.08, both beyond 0.05
    assert most_moved(list(reversed(rows))) == "cloudy_share"
    assert most_moved(rows[:1]) is None  # PSI 0 is not above 0.2
    with pytest.raises(ValueError, match="B5 is empty"):
        input_drift({"B5": reference_profile(HUNDRED)}, {"B5": np.array([])})


def test_input_drift_skips_what_the_shard_lacks_and_carries_on():
    """An input or a share missing from the shard is skipped, not the end of the list: here
    the missing ones come first."""
    from droughtwatch_assets.core.drift import input_drift

    rows = input_drift(
        {"B7": reference_profile(HUNDRED), "B5": reference_profile(HUNDRED)},
        {"B5": HUNDRED},
        {"evi_guarded_share": 0.0, "cloudy_share": 0.1},
        {"cloudy_share": 0.4},
    )
    assert [r["feature"] for r in rows] == ["B5", "cloudy_share"]
