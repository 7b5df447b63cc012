"""Drift metrics for batch inference monitoring (numpy only): prediction drift as the
Jensen-Shannon distance, feature drift as PSI and Wasserstein-1, and one monitoring row per shard.

Every logarithm is natural, so the Jensen-Shannon distance lies in [0, sqrt(ln 2)] (about 0.8326).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from droughtwatch_assets.core.calibration import estimate_performance
from droughtwatch_assets.core.metrics import classification_metrics

NUM_CLASSES = 4
UNLABELLED = -1
JS_DISTANCE_MAX = math.sqrt(math.log(2.0))
QUANTILE_GRID = np.linspace(0.0, 1.0, 101)

# The Drought Watch training-set label distribution (51,814 / 12,851 / 13,609 / 8,043 of 86,317):
# a documented default reference for prediction drift when no model-specific one is at hand.
TRAINING_LABEL_COUNTS = (51_814, 12_851, 13_609, 8_043)
TRAINING_LABEL_FRACTIONS: tuple[float, ...] = tuple(
    c / sum(TRAINING_LABEL_COUNTS) for c in TRAINING_LABEL_COUNTS
)


def label_distribution(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Fraction of ``labels`` (1-D integers 0..num_classes-1) in each class; sums to 1.

    Raises ``ValueError`` for no labels (a distribution of nothing is undefined) or a label
    outside 0..num_classes-1.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("labels is empty: the label distribution of no examples is undefined")
    if array.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class labels, got dtype {array.dtype}")
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"labels[{i}] = {int(array[i])} is not a class label 0..{num_classes - 1} "
            f"({bad.size} bad value(s))"
        )
    counts = np.bincount(array.astype(np.int64), minlength=num_classes)
    return counts / array.size


def _distribution(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D distribution, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {array.tolist()}")
    total = array.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to 0: not a distribution")
    return array / total


def _kl_to_mixture(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || m) with m = (p + q) / 2, as sum p ln(2p / (p + q)): 0 * ln 0 = 0 by convention,
    and where p > 0, p + q >= p > 0. (Halving first would underflow a subnormal p + q to 0.)"""
    mask = p > 0
    return float(np.sum(p[mask] * np.log(2 * p[mask] / (p[mask] + q[mask]))))


def js_distance(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance between two discrete distributions, natural log.

    ``sqrt(JSD)`` with ``JSD = (KL(p || m) + KL(q || m)) / 2`` and ``m = (p + q) / 2``; the same
    as ``scipy.spatial.distance.jensenshannon(p, q)`` (base e). Inputs are normalised to sum to 1
    first (counts are accepted); zero-probability bins contribute 0 (``0 * log 0 = 0``). The result
    lies in [0, sqrt(ln 2)]: 0 for identical distributions, sqrt(ln 2) for disjoint supports.
    """
    p_arr = _distribution(p, "p")
    q_arr = _distribution(q, "q")
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p has {p_arr.size} bins but q has {q_arr.size}")
    divergence = (_kl_to_mixture(p_arr, q_arr) + _kl_to_mixture(q_arr, p_arr)) / 2
    # Rounding can leave a tiny negative divergence for identical inputs, or one just above ln 2.
    return float(min(math.sqrt(max(divergence, 0.0)), JS_DISTANCE_MAX))


def _finite_values(values: object, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {array[i]} is not finite ({bad.size} non-finite value(s))")
    return array


@dataclass(frozen=True)
class ReferenceProfile:
    """The training reference of one 1-D quantity (for example per-image mean NDVI).

    ``quantiles`` are the values at u = 0, 0.01, ..., 1 (101 points, numpy's linear
    interpolation); ``bin_edges`` are the PSI bins: -inf, the reference's interior deciles
    (duplicates merged, so fewer than 10 bins when the reference has ties), +inf. A value v falls
    in bin i when ``bin_edges[i] <= v < bin_edges[i + 1]``. ``bin_fractions`` are the reference's
    fractions in those bins (about 0.1 each; ties shift them).
    """

    quantiles: tuple[float, ...]
    bin_edges: tuple[float, ...]
    bin_fractions: tuple[float, ...]
    count: int

    def __post_init__(self) -> None:
        if len(self.quantiles) != QUANTILE_GRID.size:
            raise ValueError(
                f"a reference profile needs {QUANTILE_GRID.size} quantiles, "
                f"got {len(self.quantiles)}"
            )
        if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)):
            raise ValueError("reference quantiles must be non-decreasing")
        edges = self.bin_edges
        if len(edges) < 2 or edges[0] != -math.inf or edges[-1] != math.inf:
            raise ValueError(f"bin_edges must run from -inf to +inf, got {list(edges)}")
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"bin_edges must be strictly increasing, got {list(edges)}")
        if len(self.bin_fractions) != len(edges) - 1:
            raise ValueError(f"{len(edges) - 1} bins but {len(self.bin_fractions)} bin fractions")
        if not math.isclose(sum(self.bin_fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"bin_fractions must sum to 1, got {sum(self.bin_fractions)}")
        if self.count < 1:
            raise ValueError(f"count must be positive, got {self.count}")

    @property
    def n_bins(self) -> int:
        return len(self.bin_fractions)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form: the infinite outer edges are implied, only the inner edges stored."""
        return {
            "quantiles": list(self.quantiles),
            "inner_bin_edges": list(self.bin_edges[1:-1]),
            "bin_fractions": list(self.bin_fractions),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` for a missing or bad field."""
        missing = sorted({"quantiles", "inner_bin_edges", "bin_fractions", "count"} - set(d))
        if missing:
            raise ValueError(f"reference profile: missing fields {missing}")
        return cls(
            quantiles=tuple(float(v) for v in d["quantiles"]),
            bin_edges=(-math.inf, *(float(v) for v in d["inner_bin_edges"]), math.inf),
            bin_fractions=tuple(float(v) for v in d["bin_fractions"]),
            count=int(d["count"]),
        )


def _bin_fractions(inner_edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    # side="right": a value equal to an edge belongs to the bin that starts there.
    index = np.searchsorted(inner_edges, values, side="right")
    return np.bincount(index, minlength=inner_edges.size + 1) / values.size


def reference_profile(values: np.ndarray, n_bins: int = 10) -> ReferenceProfile:
    """The reference profile of ``values`` (1-D, finite, non-empty): quantiles and PSI bins.

    The PSI bins are cut at the reference's ``n_bins``-quantiles (deciles by default).
    """
    array = _finite_values(values, "reference values")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    cuts = np.quantile(array, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    inner = np.unique(cuts)  # ties in the reference collapse empty zero-width bins
    return ReferenceProfile(
        quantiles=tuple(float(v) for v in np.quantile(array, QUANTILE_GRID)),
        bin_edges=(-math.inf, *(float(v) for v in inner), math.inf),
        bin_fractions=tuple(float(v) for v in _bin_fractions(inner, array)),
        count=int(array.size),
    )


def psi(reference: ReferenceProfile, values: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of ``values`` against ``reference`` over its bins.

    ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` with ``e_i`` the reference's and ``a_i`` the
    current fraction in bin i. A bin empty on either side would make the log infinite, so each
    fraction is floored at ``epsilon`` (no renormalisation afterwards): an empty current bin
    against a reference bin of 0.1 contributes ``(1e-4 - 0.1) ln(1e-4 / 0.1)`` (about 0.69).
    0 for a sample with the reference's bin fractions. Common reading: < 0.1 stable,
    0.1-0.25 moderate shift, > 0.25 large shift.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    current = _bin_fractions(
        np.asarray(reference.bin_edges[1:-1]), _finite_values(values, "values")
    )
    expected = np.maximum(np.asarray(reference.bin_fractions), epsilon)
    actual = np.maximum(current, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def wasserstein(reference: ReferenceProfile, values: np.ndarray) -> float:
    """Wasserstein-1 distance between ``reference`` and ``values``, in the values' units.

    The exact 1-D distance is the integral over u in [0, 1] of ``|Q_ref(u) - Q_cur(u)|`` (Q the
    quantile functions). The reference keeps only 101 quantiles, so this is approximated by the
    mean of ``|Q_ref(u) - Q_cur(u)|`` over the 101-point grid u = 0, 0.01, ..., 1, with ``Q_cur``
    by numpy's linear interpolation. Exact for a pure shift (the result is the shift); otherwise
    the error shrinks with the grid step and the tails (u = 0 and 1 are the minimum and maximum)
    weigh 1/101 each.
    """
    current = np.quantile(_finite_values(values, "values"), QUANTILE_GRID)
    return float(np.mean(np.abs(np.asarray(reference.quantiles) - current)))


@dataclass(frozen=True)
class PredictionSummary:
    """What one shard's predictions look like, without labels.

    ``n`` counts every row, missing ones included; ``class_fracs`` and
    ``most_common_percentage`` (0-100) are over the rows with a prediction only;
    ``share_missing_values`` is the fraction of rows without one. With every row missing the
    fractions and percentage are 0.
    """

    n: int
    class_fracs: tuple[float, float, float, float]
    most_common_percentage: float
    share_missing_values: float


def _probabilities(probabilities: object) -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != NUM_CLASSES:
        raise ValueError(f"probabilities must have shape (n, {NUM_CLASSES}), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("probabilities is empty: no predictions to summarise")
    return array


def _missing_rows(array: np.ndarray) -> np.ndarray:
    # A row with any NaN (or inf) has no trustworthy argmax: it counts as missing.
    return ~np.all(np.isfinite(array), axis=1)


def prediction_summary(probabilities: np.ndarray) -> PredictionSummary:
    """Summary of ``probabilities`` (shape (n, 4), n >= 1): the predicted label is the argmax.

    A row with any NaN or infinite probability is missing: counted in ``share_missing_values``
    before the argmax and left out of the class fractions.
    """
    array = _probabilities(probabilities)
    missing = _missing_rows(array)
    n = int(array.shape[0])
    valid = array[~missing]
    if valid.shape[0]:
        fracs = label_distribution(np.argmax(valid, axis=1))
    else:
        fracs = np.zeros(NUM_CLASSES)
    return PredictionSummary(
        n=n,
        class_fracs=(float(fracs[0]), float(fracs[1]), float(fracs[2]), float(fracs[3])),
        most_common_percentage=float(100.0 * fracs.max()),
        share_missing_values=float(missing.sum() / n),
    )


def _labelled_metrics(
    probabilities: np.ndarray, true_labels: np.ndarray | None
) -> tuple[float | None, float | None]:
    if true_labels is None:
        return None, None
    labels = np.asarray(true_labels)
    if labels.shape != (probabilities.shape[0],):
        raise ValueError(
            f"true_labels has shape {labels.shape}, expected ({probabilities.shape[0]},) "
            "(one label per prediction row)"
        )
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"true_labels must be integer labels, got dtype {labels.dtype}")
    # Rows with a missing prediction have no predicted label; share_missing_values reports them.
    keep = (labels != UNLABELLED) & ~_missing_rows(probabilities)
    if not keep.any():
        return None, None
    result = classification_metrics(labels[keep], np.argmax(probabilities[keep], axis=1))
    return result.accuracy, result.macro_f1


def monitoring_row(
    *,
    shard_key: str,
    model_name: str,
    model_version: str,
    probabilities: np.ndarray,
    reference_labels_dist: Sequence[float],
    ndvi_means: np.ndarray,
    ndmi_means: np.ndarray,
    ndvi_reference: ReferenceProfile,
    ndmi_reference: ReferenceProfile,
    true_labels: np.ndarray | None,
    dagster_run_id: str,
) -> dict[str, Any]:
    """One ``metricsdb.monitoring_metrics`` row (every column but ``id`` and ``recorded_at``).

    ``prediction_drift`` is :func:`js_distance` between ``reference_labels_dist`` (for example
    :data:`TRAINING_LABEL_FRACTIONS`, or the model's predicted-label distribution on validation)
    and this shard's predicted-label fractions; with every prediction missing it is the maximum,
    sqrt(ln 2), so the drift alert fires. Feature drift compares the per-image mean NDVI/NDMI of
    the shard's images with the training references. ``accuracy``/``macro_f1`` are None when
    ``true_labels`` is None or every label is -1 (unlabelled); otherwise they are computed over
    the rows with a label and a prediction. ``estimated_accuracy``/``estimated_macro_f1`` are
    what the (calibrated) probabilities expect them to be, labels or not
    (:func:`droughtwatch_assets.core.calibration.estimate_performance`), over the rows with a
    prediction; None when there is none. Bad input raises ``ValueError`` naming the shard.
    """
    try:
        array = _probabilities(probabilities)
        summary = prediction_summary(array)
        if summary.share_missing_values == 1.0:
            drift = JS_DISTANCE_MAX
        else:
            drift = js_distance(reference_labels_dist, summary.class_fracs)
        accuracy, macro_f1 = _labelled_metrics(array, true_labels)
        scored = array[~_missing_rows(array)]
        estimated = estimate_performance(scored) if len(scored) else None
        ndvi = _finite_values(ndvi_means, "ndvi_means")
        ndmi = _finite_values(ndmi_means, "ndmi_means")
        row: dict[str, Any] = {
            "shard_key": shard_key,
            "model_name": model_name,
            "model_version": model_version,
            "n_predictions": summary.n,
            **{f"class_{k}_frac": summary.class_fracs[k] for k in range(NUM_CLASSES)},
            "most_common_percentage": summary.most_common_percentage,
            "share_missing_values": summary.share_missing_values,
            "prediction_drift": drift,
            "ndvi_psi": psi(ndvi_reference, ndvi),
            "ndvi_wasserstein": wasserstein(ndvi_reference, ndvi),
            "ndmi_psi": psi(ndmi_reference, ndmi),
            "ndmi_wasserstein": wasserstein(ndmi_reference, ndmi),
            "accuracy": accuracy,
            "macro_f1": macro_f1,
            "estimated_accuracy": estimated.accuracy if estimated else None,
            "estimated_macro_f1": estimated.macro_f1 if estimated else None,
            "dagster_run_id": dagster_run_id,
        }
    except ValueError as exc:
        raise ValueError(f"shard {shard_key} (model {model_name} v{model_version}): {exc}") from exc
    return row


# A data-quality share this far from the training reference's counts as moved (absolute).
QUALITY_SHIFT = 0.05


def input_drift(
    references: Mapping[str, ReferenceProfile],
    values: Mapping[str, np.ndarray],
    quality_reference: Mapping[str, float] | None = None,
    quality: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Drift of every input the model reads, one row per input, the most moved first.

    For each feature in both `references` and `values` (per-image means: bands B1..B11 and the
    indices), its PSI and Wasserstein-1 distance against the training reference, and the mean
    of the shard and of the reference (the median of its quantiles' mean). For each
    data-quality share in both `quality_reference` and `quality` (blank, cloudy, EVI-guarded),
    the shard's and the reference's share and their difference as ``shift`` (no PSI). Rows are
    sorted by PSI, then shift, descending, so the first row names what moved most."""
    rows: list[dict[str, Any]] = []
    for feature, reference in references.items():
        if feature not in values:
            continue
        array = _finite_values(values[feature], feature)
        rows.append(
            {
                "feature": feature,
                "kind": "input",
                "psi": psi(reference, array),
                "wasserstein": wasserstein(reference, array),
                "shard_value": float(array.mean()) if array.size else float("nan"),
                "reference_value": float(np.mean(reference.quantiles)),
                "shift": None,
            }
        )
    for name, expected in (quality_reference or {}).items():
        if quality is None or name not in quality:
            continue
        rows.append(
            {
                "feature": name,
                "kind": "quality",
                "psi": None,
                "wasserstein": None,
                "shard_value": float(quality[name]),
                "reference_value": float(expected),
                "shift": float(quality[name]) - float(expected),
            }
        )
    def moved(row: Mapping[str, Any]) -> tuple[float, float]:
        return (
            row["psi"] if row["psi"] is not None else -1.0,
            abs(row["shift"]) if row["shift"] is not None else 0.0,
        )

    rows.sort(key=moved, reverse=True)
    return rows


def most_moved(rows: Sequence[Mapping[str, Any]], psi_threshold: float = 0.2) -> str | None:
    """What moved, if anything: the data-quality share furthest from its reference beyond
    QUALITY_SHIFT (cloudier or blanker scenes move every band, so the share is the cause to
    name), else the highest-PSI input above `psi_threshold`; None if neither."""
    shares = [r for r in rows if r["shift"] is not None and abs(r["shift"]) > QUALITY_SHIFT]
    if shares:
        return str(max(shares, key=lambda r: abs(r["shift"]))["feature"])
    inputs = [r for r in rows if r["psi"] is not None and r["psi"] > psi_threshold]
    if inputs:
        return str(max(inputs, key=lambda r: r["psi"])["feature"])
    return None
