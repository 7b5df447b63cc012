"""Every rule README.md documents, pinned with the README's own numbers or hand-computed cases.

The expected values here are literals (77, 190, 5 %, 0.1, 0.10, 0.25, 1e-4, two folders, 500
objects, 30 s, `<key>@<version>`, 3 retries, ...), never the modules' constants: moving a
threshold in the code must turn a test here red, as moving it in the README would make the
README wrong. Each test names the README passage it pins.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from droughtwatch_assets.adapters.storage import LocalStore, ObjectInfo
from droughtwatch_assets.core.drift import (
    js_distance,
    most_moved,
    psi,
    reference_profile,
    wasserstein,
)
from droughtwatch_assets.core.images import cloud_fraction, filter_images, is_blank, is_cloudy
from droughtwatch_assets.core.indices import compute_indices, evi_guarded_fraction, index_dataset
from droughtwatch_assets.core.portable import Parity
from droughtwatch_assets.core.promotion import promotion_gate
from droughtwatch_assets.core.tfrecord import read_shard
from droughtwatch_assets.pipeline.batching import batch_size
from droughtwatch_assets.pipeline.discovery import DiscoveryCursor, Found, discover
from droughtwatch_assets.pipeline.monitoring import (
    input_reference,
    quality_shares,
    training_reference,
)
from droughtwatch_assets.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SIDE = 65
PIXELS = 65 * 65  # 4,225
# Band positions in the (image, band, y, x) stack: B1..B11.
B1, B2, B4, B5, B6, B10, B11 = 0, 1, 3, 4, 5, 9, 10


def land(n: int = 1) -> np.ndarray:
    """Clear, warm land: B2 = 40 (dim blue), B10 = B11 = 205 (warm), everything else 60."""
    images = np.full((n, 11, SIDE, SIDE), 60, dtype=np.uint8)
    images[:, B2] = 40
    images[:, B10] = images[:, B11] = 205
    return images


def one_pixel(**bands: int) -> np.ndarray:
    """Clear land with pixel (0, 0) set to the given band values (B2=..., B10=...)."""
    images = land()
    for name, value in bands.items():
        images[0, int(name[1:]) - 1, 0, 0] = value
    return images


def flat(**bands: int) -> np.ndarray:
    """One image whose every pixel has the given band values; other bands 0."""
    images = np.zeros((1, 11, SIDE, SIDE), dtype=np.uint8)
    for name, value in bands.items():
        images[0, int(name[1:]) - 1] = value
    return images


# README "Blank": an image whose maximum over all 11 bands is <= 1 ---------------------------------


def test_blank_is_a_maximum_of_at_most_1_over_all_eleven_bands():
    images = np.zeros((6, 11, SIDE, SIDE), dtype=np.uint8)
    images[1] = 1  # every band at 1: still blank
    images[2, B1, 10, 10] = 2  # a single pixel of B1 at 2
    images[3, B11, 64, 64] = 2  # a single pixel of B11 at 2
    images[4, B5, 0, 0] = 2  # a single pixel of B5 at 2
    images[5] = land()[0]
    assert is_blank(images).tolist() == [True, True, False, False, False, False]


def test_blank_images_are_removed_and_counted():
    images = land(5)
    images[1] = 0
    images[3] = 1
    ds, stats = filter_images(images, np.array([0, 1, 2, 3, 0]), np.array(list("abcde")))
    assert (stats.records_in, stats.records_kept, stats.removed_blank) == (5, 3, 2)
    assert ds["id"].values.tolist() == ["a", "c", "e"]


# README "Cloudy": B2 >= 77 and mean(B10, B11) <= 190; an image when more than 5 % of its pixels --


@pytest.mark.parametrize(
    ("b2", "b10", "b11", "cloudy"),
    [
        (77, 190, 190, True),  # bright blue (0.30) and cold: cloudy
        (76, 190, 190, False),  # blue one count too dark
        (60, 150, 150, False),  # well below 77: never a cloud, however cold
        (40, 100, 100, False),  # the land's own blue
        (77, 190, 191, False),  # thermal mean 190.5: one half-count too warm
        (77, 189, 191, True),  # thermal mean exactly 190 from unequal bands
        (77, 191, 191, False),  # thermal mean 191
        (255, 0, 0, True),  # the brightest, coldest pixel
        (255, 255, 255, False),  # bright but hot (the uint8 sum must not wrap to 254)
        (200, 195, 215, False),  # bright over clear land's 195-215: glare, not cloud
    ],
)
def test_cloudy_pixel_thresholds(b2: int, b10: int, b11: int, cloudy: bool):
    fraction = cloud_fraction(one_pixel(B2=b2, B10=b10, B11=b11))
    assert fraction.tolist() == [pytest.approx(1 / 4225 if cloudy else 0.0)]


@pytest.mark.parametrize(
    ("cloudy_pixels", "cloudy"),
    [
        (0, False),
        (211, False),  # 211 / 4225 = 4.994 %: not more than 5 %
        (212, True),  # 212 / 4225 = 5.018 %
        (4225, True),
    ],
)
def test_image_is_cloudy_when_more_than_5_percent_of_its_pixels_are(cloudy_pixels, cloudy):
    images = land()
    pixels = images.reshape(1, 11, PIXELS)
    pixels[0, B2, :cloudy_pixels] = 77
    pixels[0, B10, :cloudy_pixels] = pixels[0, B11, :cloudy_pixels] = 190
    assert cloud_fraction(images).tolist() == [pytest.approx(cloudy_pixels / 4225)]
    assert is_cloudy(images).tolist() == [cloudy]


def test_cloudy_means_more_than_the_fraction_not_equal_to_it():
    # 5 % of 4,225 pixels is no whole number; the two fractions a count can hit exactly, 0 and
    # 1, show "more than": a clear image is not cloudy at 0, an overcast one not at 1.
    clear, overcast = land(), land()
    overcast[:, B2], overcast[:, B10], overcast[:, B11] = 200, 150, 150
    images = np.concatenate([clear, overcast])
    assert cloud_fraction(images).tolist() == [0.0, 1.0]
    assert is_cloudy(images, max_fraction=0.0).tolist() == [False, True]
    assert is_cloudy(images, max_fraction=1.0).tolist() == [False, False]
    _, stats = filter_images(images, np.array([0, 1]), np.array(["a", "b"]), max_cloud_fraction=0.0)
    assert stats.flagged_cloudy == 1
    _, stats = filter_images(images, np.array([0, 1]), np.array(["a", "b"]), max_cloud_fraction=1.0)
    assert stats.flagged_cloudy == 0


def cloudy_stack() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images: clear, cloudy (300 cloudy pixels), blank, clear."""
    images = land(4)
    pixels = images.reshape(4, 11, PIXELS)
    pixels[1, B2, :300] = 120
    pixels[1, B10, :300] = pixels[1, B11, :300] = 150
    images[2] = 0
    return images, np.array([0, 1, 2, 3]), np.array(["a", "b", "c", "d"])


def test_cloudy_images_are_kept_and_flagged_by_default():
    ds, stats = filter_images(*cloudy_stack())
    assert (stats.records_kept, stats.flagged_cloudy, stats.removed_cloudy) == (3, 1, 0)
    assert ds["id"].values.tolist() == ["a", "b", "d"]
    assert ds["cloudy"].values.tolist() == [False, True, False]
    assert ds["cloud_fraction"].values.tolist() == pytest.approx([0.0, 300 / 4225, 0.0])


def test_cloud_policy_remove_drops_cloudy_images():
    ds, stats = filter_images(*cloudy_stack(), cloud_policy="remove")
    assert (stats.records_kept, stats.flagged_cloudy, stats.removed_cloudy) == (2, 0, 1)
    assert stats.removed_blank == 1
    assert ds["id"].values.tolist() == ["a", "d"]


def test_real_sample_has_12_of_79_images_flagged_cloudy(sample_shard_path: Path):
    decoded = read_shard(sample_shard_path)
    _, stats = filter_images(decoded.images, decoded.labels, decoded.ids)
    assert (stats.records_in, stats.records_kept, stats.flagged_cloudy) == (81, 79, 12)


# README "Indices": NDVI, NDMI, EVI on bands scaled to [0, 1], their guards and clip ---------------


def test_index_formulas_on_a_hand_computed_pixel():
    # B2 = 10, B4 = 50, B5 = 150, B6 = 100 (all / 255):
    # NDVI = (150 - 50) / (150 + 50) = 0.5; NDMI = (150 - 100) / (150 + 100) = 0.2;
    # EVI = 2.5 (150 - 50) / (150 + 300 - 75 + 255) = 250 / 630 = 0.396825
    got = compute_indices(flat(B2=10, B4=50, B5=150, B6=100))
    assert float(got["ndvi"][0, 0, 0]) == pytest.approx(0.5)
    assert float(got["ndmi"][0, 0, 0]) == pytest.approx(0.2)
    assert float(got["evi"][0, 0, 0]) == pytest.approx(0.396825, abs=1e-6)


def test_a_normalised_difference_with_a_zero_denominator_is_0():
    ndvi = compute_indices(flat(B6=90))  # B4 = B5 = 0
    assert float(ndvi["ndvi"][0, 0, 0]) == 0.0
    assert float(ndvi["ndmi"][0, 0, 0]) == -1.0  # (0 - 90) / (0 + 90)
    ndmi = compute_indices(flat(B4=30))  # B5 = B6 = 0
    assert float(ndmi["ndmi"][0, 0, 0]) == 0.0
    assert float(ndmi["ndvi"][0, 0, 0]) == -1.0


@pytest.mark.parametrize(
    ("bands", "evi", "guarded"),
    [
        # B2 = 33, B4 = 2: denominator (B5 + 12 - 247.5 + 255) / 255 = (B5 + 19.5) / 255.
        ({"B2": 33, "B4": 2, "B5": 6}, 10 / 25.5, False),  # 25.5 / 255 = 0.1 exactly: computed
        ({"B2": 33, "B4": 2, "B5": 5}, 0.0, True),  # 24.5 / 255 = 0.0961 < 0.1: guarded
        ({"B2": 33, "B4": 2, "B5": 12}, 25 / 31.5, False),  # 31.5 / 255 = 0.124
        ({"B2": 40, "B4": 0, "B5": 45}, 0.0, True),  # denominator 0: guarded, no division
        ({"B2": 255, "B4": 0, "B5": 50}, 0.0, True),  # negative (cloud): guarded, not flipped
        ({"B2": 0, "B4": 0, "B5": 255}, 1.0, False),  # 2.5 * 255 / 510 = 1.25: clipped to 1
        ({"B2": 70, "B4": 60, "B5": 0}, -1.0, False),  # -150 / 90 = -1.667: clipped to -1
    ],
)
def test_evi_guard_below_0_1_and_clip_to_plus_minus_1(bands, evi, guarded):
    images = flat(**bands)
    assert float(compute_indices(images)["evi"][0, 0, 0]) == pytest.approx(evi, abs=1e-6)
    assert evi_guarded_fraction(images).tolist() == [1.0 if guarded else 0.0]


def test_indices_are_int8_with_scale_factor_1_over_127():
    # NDVI 0.5 -> round(63.5) = 64 (round half to even); NDMI 0.2 -> round(25.4) = 25.
    ds = index_dataset(np.array(["a"]), np.array([1]), flat(B2=10, B4=50, B5=150, B6=100))
    assert ds["ndvi"].dtype == np.int8 and int(ds["ndvi"][0, 0, 0]) == 64
    assert int(ds["ndmi"][0, 0, 0]) == 25
    assert float(ds["ndvi"].attrs["scale_factor"]) == pytest.approx(1 / 127)
    decoded = xr.decode_cf(ds)
    assert float(decoded["ndmi"][0, 0, 0]) == pytest.approx(25 / 127, abs=1e-6)
    # The per-image statistics come from the unquantised values.
    assert float(ds["ndvi_mean"][0]) == pytest.approx(0.5)
    assert float(ds["ndmi_mean"][0]) == pytest.approx(0.2)
    assert float(ds["evi_guarded_fraction"][0]) == 0.0


# README "registered_model": the promotion gate's three conditions, each alone ---------------------

# Rule 1 needs macro F1 >= 0.20 + 0.10 = 0.30; rule 2 accuracy >= 0.60 - 0.25 = 0.35.
MAJORITY = {"accuracy": 0.60, "macro_f1": 0.20}


def gate(challenger: dict, champion: dict | None = None):
    return promotion_gate(challenger=challenger, champion=champion, majority=MAJORITY)


@pytest.mark.parametrize(("macro_f1", "promoted"), [(0.30, True), (0.31, True), (0.29, False)])
def test_gate_rule_1_beats_the_majority_guess_by_0_10_macro_f1(macro_f1, promoted):
    decision = gate({"accuracy": 0.60, "macro_f1": macro_f1})
    assert decision.promote is promoted
    if not promoted:
        # Only this rule refuses: the reason names the bar and nothing else.
        assert decision.reason == (
            "refused: macro_f1 0.2900 is below majority-class 0.2000 + margin 0.10 = 0.3000"
        )


@pytest.mark.parametrize(("accuracy", "promoted"), [(0.35, True), (0.36, True), (0.34, False)])
def test_gate_rule_2_is_not_more_than_0_25_below_the_majority_accuracy(accuracy, promoted):
    decision = gate({"accuracy": accuracy, "macro_f1": 0.50})
    assert decision.promote is promoted
    if not promoted:
        assert decision.reason == (
            "refused: accuracy 0.3400 is below majority-class accuracy 0.6000 - slack 0.25 = 0.3500"
        )


@pytest.mark.parametrize(("macro_f1", "promoted"), [(0.45, True), (0.44, True), (0.43, False)])
def test_gate_rule_3_is_no_worse_than_the_champion(macro_f1, promoted):
    champion = {"accuracy": 0.70, "macro_f1": 0.44}
    decision = gate({"accuracy": 0.60, "macro_f1": macro_f1}, champion)
    assert decision.promote is promoted  # a tie (0.44) promotes the newer model
    assert decision.champion == 0.44
    if not promoted:
        assert decision.reason == (
            "refused: macro_f1 0.4300 is worse than the champion's 0.4400 (tolerance 0.00)"
        )


def test_gate_config_defaults_are_the_readme_numbers():
    from droughtwatch_assets.defs.registry.assets import GateConfig

    config = GateConfig()
    assert (config.margin, config.accuracy_slack, config.tolerance) == (0.10, 0.25, 0.0)


@pytest.mark.parametrize(
    ("max_abs_diff", "same_argmax", "ok"),
    [(0.0, True, True), (1e-4, True, True), (1.01e-4, True, False), (0.0, False, False)],
)
def test_onnx_export_above_1e_4_or_another_argmax_is_not_promoted(max_abs_diff, same_argmax, ok):
    assert Parity(max_abs_diff, same_argmax, 512).ok is ok


# README "The references": prediction drift and feature drift --------------------------------------


def test_prediction_drift_is_the_jensen_shannon_distance_natural_log():
    # p = (1, 0, 0, 0), q = (0.5, 0.5, 0, 0): m = (0.75, 0.25, 0, 0).
    # KL(p || m) = ln(4/3) = 0.287682; KL(q || m) = 0.5 ln(2/3) + 0.5 ln 2 = 0.143841;
    # JSD = 0.215762 and the distance sqrt(JSD) = 0.464501.
    assert js_distance([1, 0, 0, 0], [0.5, 0.5, 0, 0]) == pytest.approx(0.464501, abs=1e-6)
    # Disjoint predictions: the maximum, sqrt(ln 2) = 0.832555 ("0 to 0.833").
    assert js_distance([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(0.832555, abs=1e-6)
    assert js_distance([0.6, 0.2, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]) == 0.0


def test_references_are_val_predictions_and_training_shards_mean_ndvi_ndmi(tmp_path):
    from droughtwatch_assets.core.tfrecord import encode_shard
    from droughtwatch_assets.pipeline import lake
    from droughtwatch_assets.pipeline.ingest import filter_shard, shard_indices, validate_raw_shard

    # One training shard of five images, one of them blank: B4 = 50, B6 = 100 and B5 = 50,
    # 75, 150, 200, so the per-image mean NDVI is (B5 - 50) / (B5 + 50) = 0, 0.2, 0.5, 0.6 and
    # NDMI (B5 - 100) / (B5 + 100) = -1/3, -1/7, 0.2, 1/3.
    images = np.zeros((5, 11, SIDE, SIDE), dtype=np.uint8)
    images[:4, B4], images[:4, B6], images[:4, B10], images[:4, B11] = 50, 100, 205, 205
    for i, b5 in enumerate((50, 75, 150, 200)):
        images[i, B5] = b5
    store, key = LocalStore(tmp_path), "train/part-r-00000"
    report, decoded = validate_raw_shard(
        encode_shard(images, [0, 1, 2, 3, 0]), key, source="s", source_version="v"
    )
    filtered, _ = filter_shard(decoded)
    lake.write(store, lake.RAW_TFRECORDS, key, report.to_dict())
    lake.write(store, lake.FILTERED_IMAGES, key, filtered)
    lake.write(store, lake.SPECTRAL_INDICES, key, shard_indices(filtered))

    # Rows are true classes, columns predicted ones: predicted counts 7, 3, 0, 0 (the true
    # counts, 6 and 4, would be the label distribution instead).
    confusion = [[5, 1, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    reference = training_reference(store, [key], confusion)
    assert reference["predicted_label_distribution"] == pytest.approx([0.7, 0.3, 0.0, 0.0])
    ndvi, ndmi = reference["ndvi_mean"], reference["ndmi_mean"]
    assert ndvi["count"] == ndmi["count"] == 4  # the kept images' per-image means
    assert (ndvi["quantiles"][0], ndvi["quantiles"][100]) == pytest.approx((0.0, 0.6))
    assert ndvi["quantiles"][50] == pytest.approx(0.35)  # between 0.2 and 0.5
    assert (ndmi["quantiles"][0], ndmi["quantiles"][100]) == pytest.approx((-1 / 3, 1 / 3))
    assert reference["quality"] == pytest.approx(
        {"blank_share": 0.2, "cloudy_share": 0.0, "evi_guarded_share": 0.0}
    )
    # Every input's profile, NDVI's the same one as above, and the shards it came from.
    assert reference["inputs"]["ndvi"] == ndvi and reference["inputs"]["ndmi"] == ndmi
    assert {"B5", "evi"} <= set(reference["inputs"])
    assert reference["train_shards"] == [key]
    # A single val image predicted as class 1: the distribution is (0, 1, 0, 0), all of it.
    one = training_reference(store, [key], [[0, 1, 0, 0], [0] * 4, [0] * 4, [0] * 4])
    assert one["predicted_label_distribution"] == [0.0, 1.0, 0.0, 0.0]


def test_input_reference_pools_every_training_shard_and_keeps_only_shared_inputs(tmp_path):
    """The reference of a model trained on two shards: one ingested today (band means and
    indices), one ingested before band means existed (indices only). Inputs every shard has
    are pooled over both; the bands, missing from one, are left out. Quality shares are over
    all records and kept images."""
    from droughtwatch_assets.core.tfrecord import BANDS, encode_shard
    from droughtwatch_assets.pipeline import lake
    from droughtwatch_assets.pipeline.ingest import filter_shard, shard_indices, validate_raw_shard

    store = LocalStore(tmp_path)

    def put(key, images, labels, *, band_means=True):
        report, decoded = validate_raw_shard(
            encode_shard(images, labels), key, source="s", source_version="v"
        )
        filtered, _ = filter_shard(decoded)
        indices = shard_indices(filtered)
        if not band_means:
            indices = indices.drop_vars([f"{b}_mean" for b in BANDS])
        lake.write(store, lake.RAW_TFRECORDS, key, report.to_dict())
        lake.write(store, lake.FILTERED_IMAGES, key, filtered)
        lake.write(store, lake.SPECTRAL_INDICES, key, indices)

    # Today's shard: five records, one blank; B4 = 50, B5 = 50, 75, 150, 200: NDVI 0, 0.2,
    # 0.5, 0.6. Warm (B10 = B11 = 205) and dim blue (B2 = 0): clear, EVI denominators > 0.
    today = np.zeros((5, 11, SIDE, SIDE), dtype=np.uint8)
    today[:4, B4], today[:4, B6], today[:4, B10], today[:4, B11] = 50, 100, 205, 205
    for i, b5 in enumerate((50, 75, 150, 200)):
        today[i, B5] = b5
    put("train/part-r-00000", today, [0, 1, 2, 3, 0])
    # The older shard: three images, B5 = 100 and B4 = 50, NDVI 1/3. The first is a cloud:
    # bright blue B2 = 120 and cold B10 = B11 = 190 everywhere, and its EVI denominator
    # 100 + 6 x 50 - 7.5 x 120 + 255 = -245 (raw units) is below 0.1 x 255: EVI-guarded.
    older = np.zeros((3, 11, SIDE, SIDE), dtype=np.uint8)
    older[:, B4], older[:, B5], older[:, B6], older[:, B10], older[:, B11] = 50, 100, 100, 205, 205
    older[0, B2], older[0, B10], older[0, B11] = 120, 190, 190
    put("train/part-r-00001", older, [1, 1, 2], band_means=False)

    inputs, quality = input_reference(store, ["train/part-r-00000", "train/part-r-00001"])
    assert set(inputs) == {"ndvi", "ndmi", "evi"}  # B1..B11 are not in the older shard
    assert {f: p["count"] for f, p in inputs.items()} == {"ndvi": 7, "ndmi": 7, "evi": 7}
    ndvi = inputs["ndvi"]["quantiles"]
    # 0, 0.2, 1/3, 1/3, 1/3, 0.5, 0.6: both shards pooled
    assert (ndvi[0], ndvi[50], ndvi[100]) == pytest.approx((0.0, 1 / 3, 0.6))
    # One blank record of eight; one cloudy and EVI-guarded image of the seven kept.
    assert quality == pytest.approx(
        {"blank_share": 1 / 8, "cloudy_share": 1 / 7, "evi_guarded_share": 1 / 7}
    )

    # Only today's shard: every input, the bands' per-image means included (B5 of the four
    # kept images: 50, 75, 150, 200).
    inputs, quality = input_reference(store, ["train/part-r-00000"])
    assert set(inputs) == {*BANDS, "ndvi", "ndmi", "evi"}
    b5 = inputs["B5"]["quantiles"]
    assert inputs["B5"]["count"] == 4
    assert (b5[0], b5[100]) == pytest.approx((50.0, 200.0))
    assert quality == pytest.approx(
        {"blank_share": 1 / 5, "cloudy_share": 0.0, "evi_guarded_share": 0.0}
    )
    # No training shards at all: no profiles, and zero shares rather than a division by zero.
    assert input_reference(store, []) == (
        {},
        {"blank_share": 0.0, "cloudy_share": 0.0, "evi_guarded_share": 0.0},
    )


HUNDRED = np.arange(100, dtype=np.float64)  # deciles 9.9, 19.8, ..., 89.1: 0.1 in every bin


def test_feature_drift_psi_over_the_training_deciles_with_empty_bins_floored_at_1e_4():
    ref = reference_profile(HUNDRED)
    assert list(ref.bin_edges[1:-1]) == pytest.approx([9.9 * k for k in range(1, 10)])
    # Every current value in the first decile: (1 - 0.1) ln(1 / 0.1) for that bin and
    # 9 x (1e-4 - 0.1) ln(1e-4 / 0.1) for the nine empty ones = 2.072327 + 6.210762 = 8.283089.
    assert psi(ref, np.array([0.0, 3.0, 7.0, 9.0])) == pytest.approx(8.283089, abs=1e-6)
    # Two deciles swapped for one: 0.2 and 0.0 against 0.1 and 0.1 (the empty one floored):
    # (0.2 - 0.1) ln 2 + (1e-4 - 0.1) ln(1e-4 / 0.1) = 0.069315 + 0.690085 = 0.759400.
    current = np.concatenate([np.arange(0, 10), np.arange(0, 10), np.arange(20, 100)]).astype(float)
    assert psi(ref, current) == pytest.approx(0.759400, abs=1e-6)


def test_feature_drift_wasserstein_on_101_quantile_points():
    # Reference quantiles 0, 0.01, ..., 1; a constant 0.25: the mean over the 101 points of
    # |k / 100 - 0.25| = (325 + 2850) / 100 / 101 = 0.314356.
    ref = reference_profile(np.arange(101) / 100)
    assert len(ref.quantiles) == 101
    assert wasserstein(ref, np.full(5, 0.25)) == pytest.approx(0.314356, abs=1e-6)


@pytest.mark.parametrize(
    ("rows", "moved"),
    [
        ([{"feature": "cloudy_share", "psi": None, "shift": 0.05}], None),  # not more than 0.05
        ([{"feature": "cloudy_share", "psi": None, "shift": 0.051}], "cloudy_share"),
        ([{"feature": "blank_share", "psi": None, "shift": -0.06}], "blank_share"),
        ([{"feature": "B5", "psi": 0.2, "shift": None}], None),  # not above 0.2
        ([{"feature": "B5", "psi": 0.201, "shift": None}], "B5"),
        (
            [
                {"feature": "B4", "psi": 0.3, "shift": None},
                {"feature": "B5", "psi": 0.9, "shift": None},
            ],
            "B5",  # the highest PSI
        ),
        (
            [
                {"feature": "B5", "psi": 5.0, "shift": None},
                {"feature": "cloudy_share", "psi": None, "shift": 0.06},
            ],
            "cloudy_share",  # a quality share that moved is named before any band
        ),
    ],
)
def test_moved_input_rule(rows, moved):
    assert most_moved(rows) == moved


def test_quality_shares_blank_of_records_cloudy_and_guarded_of_kept_images():
    # 20 records, 16 kept: 4 blank; 2 of 16 cloudy; 4 of 16 with any EVI-guarded pixel.
    cloudy = np.array([True, True] + [False] * 14)
    guarded = np.array([0.5, 0.0, 0.01, 0.0, 1.0, 0.0, 0.0, 0.0, 0.2] + [0.0] * 7)
    assert quality_shares(20, cloudy, guarded) == pytest.approx(
        {"blank_share": 0.2, "cloudy_share": 0.125, "evi_guarded_share": 0.25}
    )


def test_monitoring_warning_defaults_drift_0_25_performance_drop_0_05():
    from droughtwatch_assets.defs.shards import ShardConfig

    config = ShardConfig()
    assert (config.drift_threshold, config.performance_drop) == (0.25, 0.05)
    assert (config.cloud_policy, config.max_cloud_fraction) == ("flag", 0.05)


# README "New data: the drop sensor" ---------------------------------------------------------------


def test_the_two_most_recent_folders_are_listed_again_every_tick(tmp_path):
    store = LocalStore(tmp_path / "data")
    days = ("2024-08-01", "2024-08-02", "2024-08-03")
    for day in days:
        store.write_bytes(f"drops/{day}/part-r-00000", b"first")
    cursor = discover(store, DiscoveryCursor()).cursor
    assert cursor.folders == ["drops/2024-08-02/", "drops/2024-08-03/"]
    # Re-uploads with new content into each of the three folders.
    for day in days:
        store.write_bytes(f"drops/{day}/part-r-00000", b"second, longer")
    again = discover(store, cursor)
    assert [f.key for f in again.found] == [
        "drops/2024-08-02/part-r-00000",
        "drops/2024-08-03/part-r-00000",
    ]  # the oldest folder is outside the window: `droughtwatch discover` finds that one
    assert all(f.previous_version is not None for f in again.found)


def test_a_backlog_is_taken_500_objects_per_tick(tmp_path):
    store = LocalStore(tmp_path / "data")
    for part in range(501):
        store.write_bytes(f"train/part-r-{part:05d}", b"x")
    first = discover(store, DiscoveryCursor())
    assert len(first.found) == 500
    assert first.found[-1].key == "train/part-r-00499"
    assert [f.key for f in discover(store, first.cursor).found] == ["train/part-r-00500"]


def test_sensor_ticks_every_30_seconds_by_default(tmp_path):
    from droughtwatch_assets.definitions import build_definitions
    from droughtwatch_assets.defs.ingest.sensors import TICK_JITTER_S

    settings = Settings.from_env({"DROUGHTWATCH_HOME": str(tmp_path)})
    assert settings.sensor_interval_s == 30
    defs = build_definitions(settings)
    # Dagster is asked for a second less, so that its 5 s loop, landing a little early, does not
    # skip a tick (droughtwatch_assets/defs/ingest/sensors.py).
    assert defs.resolve_sensor_def("drop_sensor").minimum_interval_seconds == 30 - TICK_JITTER_S
    assert defs.resolve_sensor_def("check_alerts").minimum_interval_seconds == 30


def test_runs_hold_at_most_250_shards_and_split_over_cores_from_50_each(tmp_path):
    assert Settings.from_env({"DROUGHTWATCH_HOME": str(tmp_path)}).shards_per_run == 250
    assert batch_size(600, max_per_run=250, parallel=1) == 200  # three runs of 200
    assert batch_size(100, max_per_run=250, parallel=4) == 50  # two runs of 50
    assert batch_size(99, max_per_run=250, parallel=4) == 99  # 49.5 each would be too few
    # 1,200 shards need 5 runs of 250; 8 runs of 150 keep 4 cores busy to the end.
    assert batch_size(1200, max_per_run=250, parallel=4) == 150


# Run keys -----------------------------------------------------------------------------------------


def found(key: str, version: str, previous: str | None = None) -> Found:
    return Found(ObjectInfo(key=key, size=10, version=version), previous)


def test_shard_runs_are_keyed_key_at_version():
    from droughtwatch_assets.defs.ingest.sensors import batch_requests

    drop = found("drops/2024-08-07/part-r-00000", '"9b2cf535f27731c974343645a3985328"')
    assert drop.run_key == 'drops/2024-08-07/part-r-00000@"9b2cf535f27731c974343645a3985328"'
    train = found("train/part-r-00003", "81920-1723000000000000000", previous="old")
    order = [drop.key, train.key]
    requests = batch_requests([drop, train], order, max_per_run=250, parallel=1)
    assert [(r.job_name, r.run_key, r.partition_key) for r in requests] == [
        (
            "drop_job",
            'drops/2024-08-07/part-r-00000@"9b2cf535f27731c974343645a3985328"',
            "drops/2024-08-07/part-r-00000",
        ),
        ("ingest_job", "train/part-r-00003@81920-1723000000000000000", "train/part-r-00003"),
    ]
    assert requests[1].tags["droughtwatch/reupload"] == "true"
    assert "droughtwatch/reupload" not in requests[0].tags


def test_a_batch_run_is_keyed_by_its_shards_versions():
    from droughtwatch_assets.defs.ingest.sensors import batch_requests

    shards = [found(f"drops/2024-08-0{d}/part-r-00000", f"v{d}") for d in (1, 2)]
    [request] = batch_requests(shards, [s.key for s in shards], max_per_run=250, parallel=1)
    items = "drops/2024-08-01/part-r-00000@v1\ndrops/2024-08-02/part-r-00000@v2"
    assert request.run_key == "drop_job:" + hashlib.sha1(items.encode()).hexdigest()[:12]
    # Replayed in another order, the same key: Dagster runs it once.
    [replay] = batch_requests(shards[::-1], [s.key for s in shards], max_per_run=250, parallel=1)
    assert replay.run_key == request.run_key


def test_retraining_is_keyed_variant_at_fingerprint_at_03_00_utc(tmp_path, monkeypatch):
    from droughtwatch_assets.definitions import build_definitions
    from droughtwatch_assets.defs.resources import StorageResource
    from droughtwatch_assets.defs.training import schedules
    from droughtwatch_assets.pipeline.corpus import CorpusManifest

    manifest = CorpusManifest(["train/part-r-00000"], ["val/part-r-00000"], "3f2a9c01d7e4")
    monkeypatch.setattr(schedules, "corpus_manifest", lambda lake: manifest)
    storage = StorageResource(data_root=str(tmp_path / "data"), lake=str(tmp_path / "lake"))
    request = schedules.retrain_request(storage, "baseline")
    assert request.run_key == "baseline@3f2a9c01d7e4"
    assert request.partition_key == "baseline"
    settings = Settings(tmp_path, str(tmp_path / "data"), str(tmp_path / "lake"), None)
    schedule = build_definitions(settings).resolve_schedule_def("baseline_daily")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 3 * * *", "UTC")


# Retries ------------------------------------------------------------------------------------------


def shard_retry_policy(home: Path):
    from droughtwatch_assets.definitions import build_definitions

    defs = build_definitions(Settings(home, str(home / "data"), str(home / "lake"), None))
    policy = defs.resolve_assets_def("batch_predictions").op.retry_policy
    assert policy is not None
    return policy


def test_a_transient_fault_is_retried_3_times_the_first_after_1_second(tmp_path):
    policy = shard_retry_policy(tmp_path)
    assert policy.max_retries == 3
    assert policy.calculate_delay(1) == 1


def test_transient_retries_wait_1_3_and_7_seconds(tmp_path):
    """README: 3 retries, waiting 1, 3 and 7 s (Dagster's exponential backoff, 1 s delay)."""
    policy = shard_retry_policy(tmp_path)
    assert [policy.calculate_delay(n) for n in (1, 2, 3)] == [1, 3, 7]


def test_deployment_retries_lost_runs_twice_and_watches_5_minutes_and_12_hours():
    instance = yaml.safe_load((REPO / "infra" / "server" / "dagster.yaml").read_text())
    assert instance["run_retries"]["enabled"] is True
    assert instance["run_retries"]["max_retries"] == 2
    # Asset failures follow their own retry policies, not the run's.
    assert instance["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert instance["run_monitoring"]["enabled"] is True
    assert instance["run_monitoring"]["start_timeout_seconds"] == 300  # 5 minutes
    assert instance["run_monitoring"]["max_runtime_seconds"] == 43200  # 12 hours
    assert math.isclose(43200 / 3600, 12)
