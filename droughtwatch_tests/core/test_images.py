"""Blank and cloud filters: exact thresholds on synthetic stacks, and the real sample's facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from droughtwatch_assets.core.images import (
    CLOUD_BLUE_MIN,
    CLOUD_THERMAL_MAX,
    FilterStats,
    cloud_fraction,
    filter_images,
    is_blank,
    is_cloudy,
)
from droughtwatch_assets.core.tfrecord import DecodedShard, empty_stack, read_shard

B2, B10, B11 = 1, 9, 10
SIDE = 65
# Found by inspecting the sample: 2 blank records, 12 with more than 5 % bright-and-cold pixels
# (two fully overcast, the rest with partial cloud cover).
SAMPLE_BLANK = [39, 46]
SAMPLE_CLOUDY = [0, 6, 22, 24, 26, 34, 36, 41, 42, 48, 59, 60]


@pytest.fixture(scope="module")
def sample(sample_shard_path: Path) -> DecodedShard:
    return read_shard(sample_shard_path)


def clear_stack(n: int) -> np.ndarray:
    """Warm, dim land: no pixel passes either cloud test."""
    images = np.full((n, 11, SIDE, SIDE), 40, dtype=np.uint8)
    images[:, B10] = 205
    images[:, B11] = 205
    return images


def ids_for(n: int) -> np.ndarray:
    return np.array([f"img-{i}" for i in range(n)])


def test_blank_means_no_value_above_one_in_any_band() -> None:
    images = np.zeros((4, 11, SIDE, SIDE), dtype=np.uint8)
    images[1] = 1
    images[2, 7, 64, 64] = 2  # a single pixel of one band is enough to be non-blank
    images[3] = clear_stack(1)[0]
    assert is_blank(images).tolist() == [True, True, False, False]


@pytest.mark.parametrize("band_by_band", [False, True])
def test_filters_agree_with_their_rules_on_mixed_stacks(band_by_band: bool) -> None:
    """The fast paths (one band decides most images) give the rules' exact answers: blank,
    nearly blank, NIR-dark, partly bright-blue, cloudy and clear images, in either layout."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 3, size=(12, 11, SIDE, SIDE), dtype=np.uint8)  # values 0..2
    images[0:3] = rng.integers(0, 2, size=(3, 11, SIDE, SIDE))  # blank (all <= 1)
    images[3] = np.minimum(images[3], 1)
    images[3, 2, 5, 5] = 2  # one pixel of B3 above 1: not blank although NIR is
    images[4:8] = clear_stack(4)
    images[5, B2, :20] = 200  # bright blue over warm land: bright but not cloudy
    images[6, B2] = 200
    images[6, B10, :30] = 150  # bright and cold in part: cloudy
    images[7, B2, 3, 3] = CLOUD_BLUE_MIN
    images[7, B10, 3, 3] = images[7, B11, 3, 3] = CLOUD_THERMAL_MAX  # one cloudy pixel
    if band_by_band:
        stack = empty_stack(len(images))
        stack[...] = images
        images = stack
    flat = np.asarray(images).reshape(len(images), -1)
    np.testing.assert_array_equal(is_blank(images), flat.max(axis=1) <= 1)
    thermal = images[:, B10].astype(int) + images[:, B11]
    cloudy_pixels = (images[:, B2] >= CLOUD_BLUE_MIN) & (thermal <= 2 * CLOUD_THERMAL_MAX)
    expected = cloudy_pixels.reshape(len(images), -1).mean(axis=1)
    np.testing.assert_allclose(cloud_fraction(images), expected, rtol=0, atol=1e-7)
    assert is_blank(images)[:4].tolist() == [True, True, True, False]
    assert cloud_fraction(images)[5] == 0 and cloud_fraction(images)[7] == 1 / SIDE**2


def test_cloudy_pixel_needs_bright_blue_and_cold_thermal() -> None:
    images = clear_stack(1)
    row = images[0]
    # Row 0: cloudy. Row 1: blue one step too dark. Row 2: thermal mean 190.5, one step too warm.
    # Row 3: both thermal bands at 255, whose uint8 sum would wrap to 254 and look cold.
    # Row 4: thermal sum exactly 380 from unequal bands (189 + 191): cloudy.
    row[B2, 0:5] = CLOUD_BLUE_MIN
    row[B2, 1] = CLOUD_BLUE_MIN - 1
    row[B10, 0:2] = CLOUD_THERMAL_MAX
    row[B11, 0:2] = CLOUD_THERMAL_MAX
    row[B10, 2], row[B11, 2] = CLOUD_THERMAL_MAX, CLOUD_THERMAL_MAX + 1
    row[B10, 3] = row[B11, 3] = 255
    row[B10, 4], row[B11, 4] = CLOUD_THERMAL_MAX - 1, CLOUD_THERMAL_MAX + 1
    fraction = cloud_fraction(images)
    assert fraction.dtype == np.float32
    assert fraction[0] == pytest.approx(2 * SIDE / SIDE**2)


def test_image_is_cloudy_above_five_percent_of_pixels() -> None:
    images = clear_stack(2)
    flat = images.reshape(2, 11, -1)
    # 5 % of 4,225 pixels is 211.25: 211 cloudy pixels are under the limit, 212 are over.
    for i, count in enumerate((211, 212)):
        flat[i, B2, :count] = 250
        flat[i, B10, :count] = flat[i, B11, :count] = 150
    assert is_cloudy(images).tolist() == [False, True]
    assert is_cloudy(images, max_fraction=0.06).tolist() == [False, False]


def test_stack_shape_and_dtype_are_checked() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 11, 65, 65\)"):
        is_blank(np.zeros((2, 4, SIDE, SIDE), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        cloud_fraction(np.zeros((2, 11, SIDE, SIDE), dtype=np.float32))


def test_sample_blank_and_cloudy_images(sample: DecodedShard) -> None:
    assert np.flatnonzero(is_blank(sample.images)).tolist() == SAMPLE_BLANK
    cloudy = np.flatnonzero(is_cloudy(sample.images)).tolist()
    assert cloudy == SAMPLE_CLOUDY
    fraction = cloud_fraction(sample.images)
    assert fraction[22] == fraction[41] == 1.0  # fully overcast
    assert fraction[[4, 13, 54]].tolist() == [0.0, 0.0, 0.0]  # clear scenes stay clear


def test_filter_flags_cloudy_images_by_default(sample: DecodedShard) -> None:
    ds, stats = filter_images(sample.images, sample.labels, sample.ids)
    assert stats == FilterStats(
        records_in=81,
        records_kept=79,
        removed_blank=2,
        removed_cloudy=0,
        flagged_cloudy=12,
        kept_label_counts={0: 46, 1: 14, 2: 14, 3: 5},
    )
    kept = np.setdiff1d(np.arange(81), SAMPLE_BLANK)
    assert ds.sizes["image"] == 79
    assert ds["id"].values.tolist() == sample.ids[kept].tolist()
    assert ds["label"].dtype == np.int8
    np.testing.assert_array_equal(ds["pixels"].values, sample.images[kept])
    assert ds["id"].values[ds["cloudy"].values].tolist() == sample.ids[SAMPLE_CLOUDY].tolist()
    assert ds.attrs["cloud_policy"] == "flag"


def test_filter_can_remove_cloudy_images(sample: DecodedShard) -> None:
    ds, stats = filter_images(sample.images, sample.labels, sample.ids, cloud_policy="remove")
    assert (stats.records_kept, stats.removed_blank, stats.removed_cloudy) == (67, 2, 12)
    assert stats.flagged_cloudy == 0
    assert sum(stats.kept_label_counts.values()) == 67
    assert not ds["cloudy"].values.any()
    assert set(ds["id"].values).isdisjoint(sample.ids[SAMPLE_CLOUDY + SAMPLE_BLANK])


def test_filter_counts_unlabelled_records_and_handles_all_blank() -> None:
    images = clear_stack(3)
    images[1] = 0
    ds, stats = filter_images(images, np.array([-1, 2, 3]), ids_for(3))
    assert stats.kept_label_counts == {0: 0, 1: 0, 2: 0, 3: 1, -1: 1}
    assert ds["label"].values.tolist() == [-1, 3]

    ds, stats = filter_images(np.zeros((2, 11, SIDE, SIDE), np.uint8), [1, 1], ids_for(2))
    assert (stats.records_in, stats.records_kept, stats.removed_blank) == (2, 0, 2)
    assert ds["pixels"].shape == (0, 11, SIDE, SIDE)
    assert stats.kept_label_counts == {0: 0, 1: 0, 2: 0, 3: 0}


def test_filter_rejects_bad_input_with_the_record_named() -> None:
    images = clear_stack(3)
    with pytest.raises(ValueError, match=r"record 2 \(id 'img-2'\) has label 4"):
        filter_images(images, np.array([0, 1, 4]), ids_for(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        filter_images(images, np.array([0, 1]), ids_for(3))
    with pytest.raises(ValueError, match="ids must have shape"):
        filter_images(images, np.array([0, 1, 2]), ids_for(2))
    with pytest.raises(ValueError, match="cloud_policy"):
        filter_images(images, np.array([0, 1, 2]), ids_for(3), cloud_policy="drop")  # type: ignore[arg-type]


def test_filter_normalises_ids_to_strings_and_labels_to_int8() -> None:
    """Ids arrive as Python strings (object arrays) from some readers: stored as a string
    dtype; labels of any integer width are stored as int8. Anything else is refused."""
    images = clear_stack(2)
    ds, _ = filter_images(images, np.array([0, 3], dtype=np.int64), np.array(["a", "b"], object))
    assert ds["id"].dtype.kind == "U" and ds["id"].values.tolist() == ["a", "b"]
    assert ds["label"].dtype == np.int8 and ds["label"].values.tolist() == [0, 3]
    ds, _ = filter_images(images, np.array([1, 2], dtype=np.uint16), ids_for(2))
    assert ds["label"].dtype == np.int8 and ds["id"].dtype.kind == "U"
    with pytest.raises(ValueError, match="ids must be strings, got dtype object"):
        filter_images(images, np.array([0, 1]), np.array([7, "b"], object))
    with pytest.raises(ValueError, match="labels must be integers, got dtype float64"):
        filter_images(images, np.array([0.0, 1.0]), ids_for(2))


def test_the_filtered_dataset_records_the_rule_it_was_filtered_with() -> None:
    ds, _ = filter_images(clear_stack(1), np.array([0]), ids_for(1))
    assert {k: ds.attrs[k] for k in (
        "cloud_policy", "blank_max_value", "cloud_blue_min", "cloud_thermal_max",
        "cloud_max_fraction", "cloud_rule",
    )} == {
        "cloud_policy": "flag",
        "blank_max_value": 1,
        "cloud_blue_min": 77,
        "cloud_thermal_max": 190,
        "cloud_max_fraction": 0.05,
        "cloud_rule": "pixel cloudy when B2 >= 77 and mean(B10, B11) <= 190 (8-bit); image "
        "cloudy when cloudy fraction > 0.05",
    }  # fmt: skip
