"""Classification metrics against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from droughtwatch_assets.core.metrics import classification_metrics, majority_metrics


def test_hand_computed_confusion_and_scores() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    m = classification_metrics(y_true, y_pred)
    assert m.confusion == ((2, 1, 0, 0), (0, 1, 1, 0), (0, 0, 2, 0), (1, 0, 0, 0))
    assert m.n == 8 and m.support == (3, 2, 2, 1)
    assert m.accuracy == pytest.approx(5 / 8)
    # class 0: predicted 3 times, 2 right; class 1: 2 predicted, 1 right; class 2: 3, 2 right
    assert m.precision == pytest.approx((2 / 3, 1 / 2, 2 / 3, 0.0))
    assert m.recall == pytest.approx((2 / 3, 1 / 2, 1.0, 0.0))
    f1_2 = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert m.f1 == pytest.approx((2 / 3, 1 / 2, f1_2, 0.0))
    assert m.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + f1_2 + 0.0) / 4)


def test_zero_division_gives_zero() -> None:
    # class 3 never present and never predicted, class 2 present but never predicted
    m = classification_metrics([0, 1, 2], [0, 1, 1])
    assert m.precision == (1.0, 0.5, 0.0, 0.0)
    assert m.recall == (1.0, 1.0, 0.0, 0.0)
    assert m.f1[2:] == (0.0, 0.0)
    empty = classification_metrics(np.array([], np.int8), np.array([], np.int8))
    assert empty.n == 0 and empty.accuracy == 0.0 and empty.macro_f1 == 0.0
    assert empty.confusion == ((0,) * 4,) * 4


def test_majority_metrics() -> None:
    m = majority_metrics([0, 0, 1, 2])
    assert m.accuracy == 0.5
    assert m.precision == (0.5, 0.0, 0.0, 0.0)
    assert m.recall == (1.0, 0.0, 0.0, 0.0)
    assert m.f1[0] == pytest.approx(2 / 3) and m.macro_f1 == pytest.approx(2 / 3 / 4)
    assert m.confusion[1] == (1, 0, 0, 0)
    assert majority_metrics([0, 0, 1, 2], majority_class=1).accuracy == 0.25


def test_as_dict_is_flat() -> None:
    d = classification_metrics([0, 1, 2, 3], [0, 1, 2, 2]).as_dict()
    assert set(d) == {"accuracy", "macro_f1"} | {
        f"{k}_{c}" for k in ("precision", "recall", "f1") for c in range(4)
    }
    assert d["accuracy"] == 0.75 and d["recall_3"] == 0.0 and d["precision_2"] == 0.5


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"y_pred\[1\] = 4 is not a class label 0..3"):
        classification_metrics([0, 1], [0, 4])
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 3"):
        classification_metrics([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="majority_class must be 0..3"):
        majority_metrics([0], majority_class=5)
    with pytest.raises(ValueError, match="majority_class must be 0..3, got 4"):
        majority_metrics([0], majority_class=4)  # one past the last class
    with pytest.raises(ValueError, match="majority_class must be 0..3, got -1"):
        majority_metrics([0], majority_class=-1)
