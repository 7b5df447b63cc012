"""The hand-written maths against the libraries it claims to match, on random inputs.

core.drift.js_distance says it equals ``scipy.spatial.distance.jensenshannon`` (base e) and
core.metrics says its precision, recall and F1 follow scikit-learn's ``zero_division=0``. They
stay hand-written because the core imports numpy only (scipy and scikit-learn arrive with MLflow,
which ingest and scoring processes never import); these tests hold them to the libraries.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from droughtwatch_assets.core.drift import js_distance
from droughtwatch_assets.core.metrics import NUM_CLASSES, classification_metrics

# Subnormal weights are left out: scipy's m = (p + q) / 2 underflows to 0 there and it returns
# inf (test_js_distance_of_a_subnormal_difference_is_zero pins ours).
weights = st.lists(
    st.floats(0, 1e3, allow_nan=False, allow_subnormal=False), min_size=4, max_size=4
).filter(lambda w: sum(w) > 1e-6)
labels = st.lists(st.integers(0, NUM_CLASSES - 1), min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(weights, weights)
def test_js_distance_is_scipys_jensenshannon_base_e(p, q):
    expected = float(jensenshannon(np.asarray(p), np.asarray(q)))
    assert abs(js_distance(p, q) - expected) < 1e-6


def test_js_distance_of_a_subnormal_difference_is_zero():
    """Found by hypothesis: q differs from p by 5e-324, the smallest float. The mixture's half
    of it underflows to 0; the distance must still be about 0, not the maximum (the earlier
    code) or inf (scipy 1.x)."""
    assert js_distance([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 5e-324, 1.0]) == 0.0
    assert js_distance([0.0, 0.0, 5e-324, 1.0], [0.0, 0.0, 0.0, 1.0]) == 0.0


def test_js_distance_on_disjoint_and_identical_distributions_matches_scipy():
    disjoint = ([1, 0, 0, 0], [0, 0, 0, 1])
    assert js_distance(*disjoint) == float(jensenshannon(*disjoint))
    assert js_distance([3, 1, 0, 0], [6, 2, 0, 0]) == 0.0


@settings(max_examples=300, deadline=None)
@given(labels, st.data())
def test_classification_metrics_are_scikit_learns(true, data):
    pred = data.draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=len(true),
                              max_size=len(true)))  # fmt: skip
    mine = classification_metrics(np.array(true), np.array(pred))
    every = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=every, zero_division=0
    )
    assert mine.accuracy == accuracy_score(true, pred)
    np.testing.assert_allclose(mine.precision, precision, atol=1e-12)
    np.testing.assert_allclose(mine.recall, recall, atol=1e-12)
    np.testing.assert_allclose(mine.f1, f1, atol=1e-12)
    assert abs(mine.macro_f1 - float(np.mean(f1))) < 1e-12
    assert list(mine.support) == [int(s) for s in support]
    assert [list(row) for row in mine.confusion] == confusion_matrix(
        true, pred, labels=every
    ).tolist()
