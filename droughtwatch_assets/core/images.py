"""Blank and cloud filters for stacks of Drought Watch patches (uint8, (n, 11, 65, 65), B1..B11).

Blank rule (the earlier implementation's): an image is blank when no band has a value above 1,
i.e. the maximum over all bands scaled by /255 is at most 1/255.

Cloud rule. The data has no QA band, so clouds are found from two physical signals at once:
clouds are bright in blue and cold in the thermal infrared. A pixel is cloudy when
B2 >= CLOUD_BLUE_MIN (77, i.e. 0.30 after /255; clear land in the sample stays below about
0.15 at the 99th percentile) AND mean(B10, B11) <= CLOUD_THERMAL_MAX (190 on the 8-bit scale;
clear land in the sample sits around 195-215). An image is cloudy when more than
CLOUD_MAX_FRACTION (5 %) of its pixels are cloudy.
The thresholds are fixed rather than taken from a per-image min-max normalisation of the
thermal bands (the published recipe): normalising per image makes every image have "coldest"
pixels, so that recipe flags 2-7 % of the pixels of perfectly clear images.
Both tests are integer comparisons on the uint8 stack (B10 + B11 in uint16 against 2 * 190):
this runs on every ingested image, so the full stack is never converted to float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr

from droughtwatch_assets.core.imagestack import image_dataset
from droughtwatch_assets.core.tfrecord import (
    BANDS,
    IMAGE_SIDE,
    NUM_CLASSES,
    UNLABELLED,
    select_images,
)

BLANK_MAX_VALUE = 1
CLOUD_BLUE_MIN = 77
CLOUD_THERMAL_MAX = 190
CLOUD_MAX_FRACTION = 0.05

CloudPolicy = Literal["flag", "remove"]
CLOUD_POLICIES: tuple[str, ...] = ("flag", "remove")

_PIXELS = IMAGE_SIDE * IMAGE_SIDE
_B2 = BANDS.index("B2")
_B5 = BANDS.index("B5")
_B10 = BANDS.index("B10")
_B11 = BANDS.index("B11")


def _check_stack(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    expected = (len(BANDS), IMAGE_SIDE, IMAGE_SIDE)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(
            f"images must have shape (n, {', '.join(map(str, expected))}), got {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (8-bit scaled bands), got {images.dtype}")
    return images


def is_blank(images: np.ndarray) -> np.ndarray:
    """(n,) bool: True where every band of the image is at most BLANK_MAX_VALUE."""
    images = _check_stack(images)
    n = images.shape[0]
    # One band rules out almost every image: only those with nothing above the threshold in
    # NIR (bright over land and over cloud) have all their bands checked.
    nir_max = images[:, _B5].reshape(n, _PIXELS).max(axis=1, initial=0)
    blank = nir_max <= BLANK_MAX_VALUE
    candidates = np.flatnonzero(blank)
    if candidates.size:
        rest = images[candidates].reshape(candidates.size, len(BANDS) * _PIXELS)
        blank[candidates] = rest.max(axis=1, initial=0) <= BLANK_MAX_VALUE
    return blank


def cloud_fraction(images: np.ndarray) -> np.ndarray:
    """(n,) float32: the fraction of each image's pixels that are bright in blue and cold."""
    images = _check_stack(images)
    n = images.shape[0]
    bright = (images[:, _B2] >= CLOUD_BLUE_MIN).reshape(n, _PIXELS)
    counts = np.zeros(n, dtype=np.int32)
    # Clear images have no bright blue pixel at all: the thermal test runs on the others only.
    some = np.flatnonzero(bright.any(axis=1))
    if some.size:
        # mean(B10, B11) <= 190 exactly when B10 + B11 <= 380; uint16 holds the sum.
        thermal_sum = np.add(images[some, _B10], images[some, _B11], dtype=np.uint16)
        cold = thermal_sum.reshape(some.size, _PIXELS) <= 2 * CLOUD_THERMAL_MAX
        cold &= bright[some]
        counts[some] = cold.view(np.uint8).sum(axis=1, dtype=np.int32)
    return (counts / _PIXELS).astype(np.float32)


def is_cloudy(images: np.ndarray, max_fraction: float = CLOUD_MAX_FRACTION) -> np.ndarray:
    """(n,) bool: True where more than `max_fraction` of the pixels are cloudy."""
    return cloud_fraction(images) > max_fraction


@dataclass(frozen=True)
class FilterStats:
    """What `filter_images` did to one batch of records."""

    records_in: int
    records_kept: int
    removed_blank: int
    removed_cloudy: int
    flagged_cloudy: int
    # label -> kept count; always 0..3, plus UNLABELLED (-1) when some kept record has no label
    kept_label_counts: dict[int, int] = field(default_factory=dict)


def _check_labels(labels: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match images, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < UNLABELLED) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"record {i} (id {str(ids[i])!r}) has label {int(labels[i])}; labels must be "
            f"{UNLABELLED} (unlabelled) or 0..{NUM_CLASSES - 1} ({bad.size} bad record(s))"
        )
    return labels.astype(np.int8, copy=False)


def filter_images(
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    *,
    cloud_policy: CloudPolicy = "flag",
    max_cloud_fraction: float = CLOUD_MAX_FRACTION,
) -> tuple[xr.Dataset, FilterStats]:
    """Drop blank images; remove or flag (the default) cloudy ones.

    Flagging is the default because the benchmark's labels include cloudy scenes. The returned
    Dataset (see `imagestack.image_dataset`) carries every kept image's `cloud_fraction` and
    `cloudy` flag, and the rule's thresholds in its attrs.
    """
    if cloud_policy not in CLOUD_POLICIES:
        raise ValueError(f"cloud_policy must be one of {CLOUD_POLICIES}, got {cloud_policy!r}")
    images = _check_stack(images)
    n = images.shape[0]
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match images, got {ids.shape}")
    if ids.dtype.kind != "U":
        if ids.size and not all(isinstance(i, str) for i in ids.tolist()):
            raise ValueError(f"ids must be strings, got dtype {ids.dtype}")
        ids = ids.astype(str)
    labels = _check_labels(labels, ids, n)

    blank = is_blank(images)
    fraction = cloud_fraction(images)
    cloudy = fraction > max_cloud_fraction
    keep = ~blank
    if cloud_policy == "remove":
        keep &= ~cloudy
    removed_cloudy = int(np.count_nonzero(cloudy & ~blank)) if cloud_policy == "remove" else 0
    if keep.all():
        kept = (images, labels, ids, fraction, cloudy)  # no copy of the stack in the common case
    else:
        kept_images = select_images(images, keep)
        kept = (kept_images, labels[keep], ids[keep], fraction[keep], cloudy[keep])
    kept_images, kept_labels, kept_ids, kept_fraction, kept_cloudy = kept

    counts = np.bincount(kept_labels.astype(np.int64) - UNLABELLED, minlength=NUM_CLASSES + 1)
    label_counts = {label: int(counts[label - UNLABELLED]) for label in range(NUM_CLASSES)}
    if counts[0]:
        label_counts[UNLABELLED] = int(counts[0])
    stats = FilterStats(
        records_in=n,
        records_kept=int(kept_images.shape[0]),
        removed_blank=int(np.count_nonzero(blank)),
        removed_cloudy=removed_cloudy,
        flagged_cloudy=int(np.count_nonzero(kept_cloudy)) if cloud_policy == "flag" else 0,
        kept_label_counts=label_counts,
    )
    dataset = image_dataset(
        kept_images,
        kept_labels,
        kept_ids,
        cloud_fraction=kept_fraction,
        cloudy=kept_cloudy,
        attrs={
            "cloud_policy": cloud_policy,
            "blank_max_value": BLANK_MAX_VALUE,
            "cloud_blue_min": CLOUD_BLUE_MIN,
            "cloud_thermal_max": CLOUD_THERMAL_MAX,
            "cloud_max_fraction": float(max_cloud_fraction),
            "cloud_rule": (
                f"pixel cloudy when B2 >= {CLOUD_BLUE_MIN} and mean(B10, B11) <= "
                f"{CLOUD_THERMAL_MAX} (8-bit); image cloudy when cloudy fraction > "
                f"{max_cloud_fraction}"
            ),
        },
    )
    return dataset, stats
