"""Calibrated probabilities and performance estimated without labels (numpy only).

Calibration. A classifier is calibrated when, among the images it gives probability p for a
class, a fraction p belongs to it. The expected calibration error (ECE) measures the gap: the
predictions are binned by their confidence (the top probability, 15 equal-width bins) and ECE is
the bin-size-weighted mean of |accuracy - mean confidence| per bin (Guo et al., 2017).

Temperature scaling (the same paper) fixes most of it with one number fitted on the validation
set: the log-probabilities are divided by T and renormalised (T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one); the argmax, hence accuracy, is unchanged. T is
the minimiser of the validation negative log-likelihood, found by a golden-section search over
log T in [log 0.05, log 20].

Performance without labels: confidence-based performance estimation (CBPE, as NannyML
implements it). With calibrated probabilities P (n x k) and predicted labels y^ = argmax P, the
expected confusion matrix has E[C[j, i]] = sum over rows predicted i of P[row, j]. Expected
accuracy is the mean top probability; expected per-class F1 is 2 TP / (2 TP + FP + FN) with
TP_i = E[C[i, i]], FP_i = sum_j!=i E[C[j, i]], FN_i = sum_j!=i E[C[i, j]] (0 when the
denominator is 0, as the labelled metrics), and macro F1 their mean over the k classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from droughtwatch_assets.core.metrics import NUM_CLASSES

ECE_BINS = 15
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_EPS = 1e-12


def _probabilities(values: object, num_classes: int = NUM_CLASSES) -> np.ndarray:
    p = np.asarray(values, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != num_classes:
        raise ValueError(f"probabilities must be (n, {num_classes}), got shape {p.shape}")
    if p.size and (not np.isfinite(p).all() or (p < 0).any()):
        raise ValueError("probabilities must be finite and non-negative")
    return p


def _check_labels(labels: object, n: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if n and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be class labels 0..{NUM_CLASSES - 1}")
    return y


def apply_temperature(probabilities: object, temperature: float) -> np.ndarray:
    """The probabilities with their log divided by `temperature`, renormalised per row."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    p = _probabilities(probabilities)
    if not p.size:
        return p.astype(np.float32)
    logits = np.log(np.clip(p, _EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(probabilities: object, labels: object) -> float:
    p = _probabilities(probabilities)
    y = _check_labels(labels, len(p))
    if not len(p):
        return 0.0
    return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), y], _EPS, None))))


def fit_temperature(probabilities: object, labels: object, iterations: int = 60) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (1.0 with no
    rows). The NLL of temperature scaling is convex in 1/T, so a golden-section search on log T
    finds its minimum; 60 steps narrow the range to about 1e-12 of its width."""
    p = _probabilities(probabilities)
    y = _check_labels(labels, len(p))
    if not len(p):
        return 1.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(p, math.exp(log_t)), y)

    lo, hi = _LOG_T_RANGE
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: its edges, rows, mean confidence and accuracy (NaN when empty)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    ece: float


def reliability(probabilities: object, labels: object, bins: int = ECE_BINS) -> Reliability:
    """The reliability diagram's bins and the expected calibration error."""
    p = _probabilities(probabilities)
    y = _check_labels(labels, len(p))
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = p.max(axis=1) if len(p) else np.empty(0)
    correct = (p.argmax(axis=1) == y) if len(p) else np.empty(0, bool)
    # Bin i holds confidences in (edges[i], edges[i + 1]]; a confidence of 0 goes to bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts, conf, acc = [], [], []
    ece = 0.0
    for i in range(bins):
        mask = which == i
        n = int(mask.sum())
        counts.append(n)
        if n:
            c, a = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += n / len(p) * abs(a - c)
        else:
            c = a = float("nan")
        conf.append(c)
        acc.append(a)
    return Reliability(tuple(edges.tolist()), tuple(counts), tuple(conf), tuple(acc), ece)


def expected_calibration_error(
    probabilities: object, labels: object, bins: int = ECE_BINS
) -> float:
    return reliability(probabilities, labels, bins).ece


@dataclass(frozen=True)
class EstimatedPerformance:
    """CBPE's estimates for one set of predictions (see the module docstring)."""

    n: int
    accuracy: float
    macro_f1: float
    f1: tuple[float, ...]
    confusion: tuple[tuple[float, ...], ...]  # expected counts, rows = true, cols = predicted


def estimate_performance(probabilities: object) -> EstimatedPerformance:
    """Expected accuracy and macro F1 of the argmax predictions, if the (calibrated)
    probabilities are right; NaN for no rows."""
    p = _probabilities(probabilities)
    k = p.shape[1]
    if not len(p):
        nan = float("nan")
        return EstimatedPerformance(0, nan, nan, (nan,) * k, ((0.0,) * k,) * k)
    p = p / p.sum(axis=1, keepdims=True)
    predicted = p.argmax(axis=1)
    confusion = np.zeros((k, k))
    for i in range(k):
        confusion[:, i] = p[predicted == i].sum(axis=0)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.zeros(k)
    np.divide(2 * tp, denominator, out=f1, where=denominator > 0)
    return EstimatedPerformance(
        n=len(p),
        accuracy=float(p.max(axis=1).mean()),
        macro_f1=float(f1.mean()),
        f1=tuple(f1.tolist()),
        confusion=tuple(tuple(row) for row in confusion.tolist()),
    )
