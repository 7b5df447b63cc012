"""Calibration (ECE, temperature scaling) and CBPE, on hand-computed cases and against
independent computations (scikit-learn's metrics over labels drawn from the probabilities)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from droughtwatch_assets.core.calibration import (
    apply_temperature,
    estimate_performance,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ece_by_hand():
    # Confidences 0.9, 0.9 (one right, one wrong), 0.6 (right), 0.3 (wrong); 15 bins.
    p = np.array([
        [0.9, 0.05, 0.03, 0.02],
        [0.9, 0.05, 0.03, 0.02],
        [0.6, 0.2, 0.1, 0.1],
        [0.3, 0.25, 0.25, 0.2],
    ])  # fmt: skip
    y = np.array([0, 1, 0, 1])
    # Bins: (0.8667, 0.9333]: 2 rows, conf 0.9, acc 0.5; (0.5333, 0.6]: conf 0.6, acc 1;
    # (0.2667, 0.3333]: conf 0.3, acc 0.  ECE = 2/4 * 0.4 + 1/4 * 0.4 + 1/4 * 0.3 = 0.375
    assert expected_calibration_error(p, y) == pytest.approx(0.375)
    r = reliability(p, y)
    assert sum(r.counts) == 4 and len(r.edges) == 16
    assert expected_calibration_error(np.eye(4), np.arange(4)) == 0.0  # sure and right


def test_temperature_keeps_the_argmax_and_one_is_the_identity():
    p = _softmax(np.random.default_rng(0).normal(size=(50, 4)) * 3)
    assert np.allclose(apply_temperature(p, 1.0), p, atol=1e-6)
    for t in (0.5, 2.0, 10.0):
        scaled = apply_temperature(p, t)
        assert np.allclose(scaled.sum(axis=1), 1.0, atol=1e-6)
        assert (scaled.argmax(axis=1) == p.argmax(axis=1)).all()
    assert apply_temperature(p, 2.0).max(axis=1).mean() < p.max(axis=1).mean()
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(p, 0.0)


def test_fitting_recovers_the_temperature_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20_000, 4)) * 1.5
    truth = _softmax(logits)
    labels = np.array([rng.choice(4, p=row) for row in truth])
    overconfident = _softmax(logits * 2.0)  # = the truth at temperature 1/2
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    calibrated = apply_temperature(overconfident, t)
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(
        overconfident, labels
    )
    assert expected_calibration_error(calibrated, labels) < 0.02
    assert expected_calibration_error(overconfident, labels) > 0.1
    assert fit_temperature(np.empty((0, 4)), np.empty(0, np.int64)) == 1.0


def test_cbpe_by_hand():
    # Two rows predicted 0 with P(0) = 0.8 and 0.6, one predicted 1 with P(1) = 0.7.
    p = np.array([[0.8, 0.2, 0, 0], [0.6, 0.4, 0, 0], [0.3, 0.7, 0, 0]])
    est = estimate_performance(p)
    assert est.accuracy == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    # Expected confusion (rows true, cols predicted): col 0 = 0.8+0.6 | 0.2+0.4, col 1 = 0.3 | 0.7
    assert np.allclose(est.confusion[0][:2], [1.4, 0.3]) and np.allclose(est.confusion[1][:2],
                                                                          [0.6, 0.7])  # fmt: skip
    # Class 0: TP 1.4, FP 0.6, FN 0.3 -> F1 2.8 / 3.7; class 1: TP 0.7, FP 0.3, FN 0.6 -> 1.4 / 2.3
    # Classes 2, 3: never predicted nor expected -> 0.
    assert est.f1[0] == pytest.approx(2.8 / 3.7) and est.f1[1] == pytest.approx(1.4 / 2.3)
    assert est.macro_f1 == pytest.approx((2.8 / 3.7 + 1.4 / 2.3) / 4)
    assert est.n == 3
    # Unnormalised rows are normalised first: twice each row gives the same estimates.
    assert estimate_performance(2 * p) == est
    empty = estimate_performance(np.empty((0, 4)))
    assert empty.n == 0 and np.isnan(empty.accuracy) and np.isnan(empty.macro_f1)
    assert len(empty.f1) == 4 and all(np.isnan(empty.f1))
    assert empty.confusion == ((0.0,) * 4,) * 4


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        (np.zeros((2, 3)), r"must be \(n, 4\), got shape \(2, 3\)"),
        (np.zeros(4), r"must be \(n, 4\), got shape \(4,\)"),
        ([[0.5, 0.5, np.nan, 0.0]], "finite and non-negative"),  # not finite, none negative
        ([[1.5, -0.5, 0.0, 0.0]], "finite and non-negative"),  # negative, all finite
    ],
)
def test_probabilities_are_refused_for_each_reason_alone(probabilities, message):
    with pytest.raises(ValueError, match=message):
        estimate_performance(probabilities)


def test_cbpe_matches_the_metrics_of_labels_drawn_from_calibrated_probabilities():
    """If the probabilities are right, the estimate is the mean of what scikit-learn measures
    over labels drawn from them."""
    rng = np.random.default_rng(2)
    p = _softmax(rng.normal(size=(400, 4)) * 1.2 + np.array([1.0, 0.0, 0.0, -0.5]))
    predicted = p.argmax(axis=1)
    accuracies, f1s = [], []
    for _ in range(400):
        labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
        accuracies.append(accuracy_score(labels, predicted))
        f1s.append(f1_score(labels, predicted, average="macro", labels=range(4), zero_division=0))
    est = estimate_performance(p)
    assert est.accuracy == pytest.approx(np.mean(accuracies), abs=0.005)
    assert est.macro_f1 == pytest.approx(np.mean(f1s), abs=0.01)


def test_cbpe_matches_nannyml():
    """NannyML 0.13.1's CBPE on the same probabilities (recorded by `make nannyml-reference`,
    which runs the library in its own environment): the same expected accuracy and macro F1."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).with_name("nannyml_cbpe_reference.json")).read_text())
    assert recorded["nannyml"] == "0.13.1" and len(recorded["cases"]) == 3
    for case in recorded["cases"]:
        ours = estimate_performance(np.array(case["probabilities"]))
        assert ours.accuracy == pytest.approx(case["accuracy"], abs=1e-6), case["seed"]
        assert ours.macro_f1 == pytest.approx(case["macro_f1"], abs=1e-6), case["seed"]


# --- hand-computed cases: the binning, the scaling and the likelihood with literal numbers ----


def test_reliability_bins_a_hand_made_case():
    """Ten bins of width 0.1. Confidences 0.25 (right), 0.55 (right), 1.0 (right) and 0.92
    (wrong): bins 2, 5 and 9 (1.0 falls in the last bin). ECE = 1/4 |1 - 0.25| +
    1/4 |1 - 0.55| + 2/4 |0.5 - 0.96| = 0.1875 + 0.1125 + 0.23 = 0.53."""
    p = [
        [0.25, 0.25, 0.25, 0.25],
        [0.55, 0.45, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.04, 0.92, 0.04, 0.0],
    ]
    r = reliability(p, [0, 0, 1, 2], bins=10)
    assert r.edges == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert r.counts == (0, 0, 1, 0, 0, 1, 0, 0, 0, 2)
    assert [r.confidence[b] for b in (2, 5, 9)] == pytest.approx([0.25, 0.55, 0.96])
    assert [r.accuracy[b] for b in (2, 5, 9)] == [1.0, 1.0, 0.5]
    assert all(np.isnan(r.confidence[b]) and np.isnan(r.accuracy[b]) for b in (0, 1, 3, 4, 6))
    assert r.ece == pytest.approx(0.53)
    assert expected_calibration_error(p, [0, 0, 1, 2], bins=10) == pytest.approx(0.53)
    # The default: 15 bins (16 edges); the 0.92 and 1.0 rows still share the last bin.
    assert len(reliability(p, [0, 0, 1, 2]).edges) == 16
    empty = reliability(np.empty((0, 4)), [], bins=10)
    assert empty.counts == (0,) * 10 and empty.ece == 0.0


def test_apply_temperature_by_hand():
    """T = 2 takes the square root of each probability and renormalises:
    [0.5, 0.25, 0.25, 0] -> [0.7071, 0.5, 0.5, ~1e-6] / 1.7071."""
    scaled = apply_temperature([[0.5, 0.25, 0.25, 0.0]], 2.0)
    assert scaled.dtype == np.float32
    assert scaled[0] == pytest.approx([0.414214, 0.292893, 0.292893, 5.9e-7], abs=1e-6)
    # A probability of 0 is floored at 1e-12 first, so a temperature lifts it too:
    # sqrt(1e-12) / 1.7071 = 5.858e-7, not 0.
    assert scaled[0, 3] == pytest.approx(5.858e-7, rel=1e-3)
    # At T = 100 a one-hot row is nearly flat: 1e-12 ** 0.01 = 0.758578 for each zero, so
    # 1 / (1 + 3 x 0.758578) = 0.305275 and 0.758578 / 3.275734 = 0.231575.
    flat = apply_temperature([[1.0, 0.0, 0.0, 0.0]], 100.0)
    assert flat[0] == pytest.approx([0.305275, 0.231575, 0.231575, 0.231575], abs=1e-6)
    # A temperature near zero makes each row one-hot, row by row (no underflow to NaN when
    # the rows' scales differ by far).
    sharp = apply_temperature([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.01, 0.99]], 0.0005)
    assert np.array_equal(sharp, np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    assert apply_temperature(np.empty((0, 4)), 2.0).dtype == np.float32


def test_ece_takes_its_number_of_bins():
    """Confidences 0.9 (right), 0.6 (wrong), 0.7 (right). In 2 bins all three share (0.5, 1]:
    |2/3 - 0.7333| = 0.0667. In the default 10 they are apart: (0.1 + 0.6 + 0.3) / 3 = 1/3."""
    p = [[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.3, 0.7, 0, 0]]
    assert expected_calibration_error(p, [0, 1, 1], bins=2) == pytest.approx(1 / 15)
    assert expected_calibration_error(p, [0, 1, 1]) == pytest.approx(1 / 3)


def test_negative_log_likelihood_by_hand():
    p = [[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]
    assert negative_log_likelihood(p, [0, 1]) == pytest.approx(0.693147, abs=1e-6)  # ln 2
    # A zero probability on the label is clipped at 1e-12: -ln(1e-12) = 27.631021, not inf.
    assert negative_log_likelihood(p[:1], [2]) == pytest.approx(27.631021, abs=1e-6)
    assert negative_log_likelihood(p, np.array([0.0, 1.0])) == pytest.approx(0.693147, abs=1e-6)
    assert negative_log_likelihood(np.empty((0, 4)), []) == 0.0
    for bad in ([0, 4], [-1, 0]):
        with pytest.raises(ValueError, match=r"labels must be class labels 0..3"):
            negative_log_likelihood(p, bad)
