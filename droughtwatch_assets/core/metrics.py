"""Classification metrics for the four forage classes (numpy only).

Zero-division rule: a precision, recall or F1 whose denominator is 0 (a class never predicted,
never present, or both) is 0.0, as scikit-learn's `zero_division=0`; macro F1 averages all classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 4


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix of one run."""

    n: int
    accuracy: float
    macro_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows = true class, cols = predicted class

    def as_dict(self) -> dict[str, float]:
        """Flat: accuracy, macro_f1, precision_0.., recall_0.., f1_0.. (for MLflow log_metrics)."""
        out = {"accuracy": self.accuracy, "macro_f1": self.macro_f1}
        for name in ("precision", "recall", "f1"):
            for label, value in enumerate(getattr(self, name)):
                out[f"{name}_{label}"] = value
        return out


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _labels(values: object, name: str, num_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {int(array[i])} is not a class label 0..{num_classes - 1} "
            f"({bad.size} bad value(s))"
        )
    return array


def classification_metrics(
    y_true: object, y_pred: object, num_classes: int = NUM_CLASSES
) -> ClassificationMetrics:
    """Metrics of predicted labels against true labels (both 1-D integer arrays, same length).

    With no examples every metric is 0.0.
    """
    true = _labels(y_true, "y_true", num_classes)
    pred = _labels(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    confusion = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes)
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_ratio(correct, predicted)
    recall = _safe_ratio(correct, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    n = int(true.size)
    return ClassificationMetrics(
        n=n,
        accuracy=float(correct.sum() / n) if n else 0.0,
        macro_f1=float(f1.mean()),
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in support),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )


def majority_metrics(y_true: object, majority_class: int = 0) -> ClassificationMetrics:
    """What a model that always predicts `majority_class` scores on `y_true`."""
    true = _labels(y_true, "y_true", NUM_CLASSES)
    if not 0 <= majority_class < NUM_CLASSES:
        raise ValueError(f"majority_class must be 0..{NUM_CLASSES - 1}, got {majority_class}")
    return classification_metrics(true, np.full(true.shape, majority_class, dtype=np.int64))
