"""Spectral indices: formulas against a float64 reference, guards, int8 storage, sample facts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from droughtwatch_assets.core.images import is_blank
from droughtwatch_assets.core.indices import (
    EVI_MIN_DENOMINATOR,
    INDEX_SCALE,
    compute_indices,
    evi_guarded_fraction,
    index_dataset,
    quantise,
)
from droughtwatch_assets.core.tfrecord import DecodedShard, read_shard

B2, B4, B5, B6 = 1, 3, 4, 5
SIDE = 65


@pytest.fixture(scope="module")
def sample(sample_shard_path: Path) -> DecodedShard:
    return read_shard(sample_shard_path)


def reference(images: np.ndarray) -> dict[str, np.ndarray]:
    """The formulas written plainly in float64 on bands scaled to [0, 1]."""
    b = images.astype(np.float64) / 255
    b2, b4, b5, b6 = b[:, B2], b[:, B4], b[:, B5], b[:, B6]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = np.where(b5 + b4 == 0, 0.0, (b5 - b4) / (b5 + b4))
        ndmi = np.where(b5 + b6 == 0, 0.0, (b5 - b6) / (b5 + b6))
        denominator = b5 + 6 * b4 - 7.5 * b2 + 1
        # Decide the guard in exact 8-bit units: a denominator of exactly 0.1 (25.5 / 255) is
        # not guarded, but 25.5 / 255 computed in floats can land just below 0.1.
        raw = images.astype(np.float64)
        guarded = raw[:, B5] + 6 * raw[:, B4] - 7.5 * raw[:, B2] + 255 < EVI_MIN_DENOMINATOR * 255
        evi = np.where(guarded, 0.0, 2.5 * (b5 - b4) / denominator).clip(-1, 1)
    return {"ndvi": ndvi, "ndmi": ndmi, "evi": evi, "guarded": guarded}


def stack_with(**bands: int) -> np.ndarray:
    images = np.zeros((1, 11, SIDE, SIDE), dtype=np.uint8)
    for name, value in bands.items():
        images[0, int(name[1:]) - 1] = value
    return images


def test_known_values() -> None:
    got = compute_indices(stack_with(B2=20, B4=30, B5=90, B6=60))
    assert got["ndvi"][0, 0, 0] == pytest.approx(60 / 120)
    assert got["ndmi"][0, 0, 0] == pytest.approx(30 / 150)
    # 2.5 (90 - 30) / (90 + 180 - 150 + 255), all divided by 255 top and bottom
    assert got["evi"][0, 0, 0] == pytest.approx(150 / 375)
    assert all(v.dtype == np.float32 and v.shape == (1, SIDE, SIDE) for v in got.values())


def test_zero_denominators_give_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_indices(stack_with())  # every band 0
    assert not any(v.any() for v in got.values())


@pytest.mark.parametrize(
    ("blue", "nir", "expected_evi", "guarded"),
    [
        (33, 20, 1.0, False),  # denominator (20 + 255 - 247.5) / 255 = 0.108: 1.82, clipped
        (34, 20, 0.0, True),  # denominator 0.078 < 0.1: guarded
        (31, 3, 2.5 * 3 / 25.5, False),  # denominator exactly 0.1 (25.5 / 255): computed
        (31, 2, 0.0, True),  # 24.5 / 255: guarded
        (255, 20, 0.0, True),  # negative denominator (bright cloud): guarded, not sign-flipped
    ],
)
def test_evi_guard_and_clip(blue: int, nir: int, expected_evi: float, guarded: bool) -> None:
    images = stack_with(B2=blue, B5=nir)
    assert compute_indices(images)["evi"][0, 0, 0] == pytest.approx(expected_evi)
    assert evi_guarded_fraction(images).tolist() == [1.0 if guarded else 0.0]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3), high=st.sampled_from([2, 40, 256]))
def test_matches_reference_on_random_stacks(seed: int, n: int, high: int) -> None:
    # Small value ranges make zero denominators and bright-blue guards common.
    images = np.random.default_rng(seed).integers(0, high, (n, 11, SIDE, SIDE), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_indices(images)
        ds = index_dataset(np.array([f"i{k}" for k in range(n)]), np.zeros(n, np.int8), images)
    ref = reference(images)
    for name in ("ndvi", "ndmi", "evi"):
        np.testing.assert_allclose(got[name], ref[name], atol=2e-6)
        assert np.all(np.abs(got[name]) <= 1)
        quantised = ds[name].values
        assert quantised.dtype == np.int8 and not np.any(quantised == -128)
        np.testing.assert_allclose(quantised * INDEX_SCALE, ref[name], atol=0.5 / 127 + 1e-6)
        np.testing.assert_allclose(ds[f"{name}_mean"], ref[name].mean(axis=(1, 2)), atol=1e-6)
        np.testing.assert_allclose(ds[f"{name}_std"], ref[name].std(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(ds["evi_guarded_fraction"], ref["guarded"].mean(axis=(1, 2)))


def test_std_of_nearly_uniform_images_is_accurate() -> None:
    # sum(x^2) - n mean^2 in float32 would be off by about 10 % here.
    images = stack_with(B4=30, B5=150, B6=60)
    images[0, B5, ::2] = 151
    ds = index_dataset(np.array(["a"]), np.array([0]), images)
    ref = reference(images)
    assert float(ds["ndvi_std"][0]) == pytest.approx(ref["ndvi"].std(), rel=1e-3)


def test_dataset_layout_and_cf_decoding() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 11, SIDE, SIDE), dtype=np.uint8)
    ds = index_dataset(np.array(["a", "b", "c"]), np.array([0, 3, -1]), images)
    assert dict(ds.sizes) == {"image": 3, "y": SIDE, "x": SIDE}
    assert ds["label"].dtype == np.int8 and ds["id"].values.tolist() == ["a", "b", "c"]
    for name in ("ndvi", "ndmi", "evi"):
        attrs = ds[name].attrs
        assert (attrs["valid_min"], attrs["valid_max"], attrs["units"]) == (-127, 127, "1")
        assert attrs["add_offset"] == 0.0 and attrs["long_name"]
    for name in ("ndvi_mean", "ndvi_std", "evi_std", "evi_guarded_fraction"):
        assert ds[name].dims == ("image",) and ds[name].dtype == np.float32
    decoded = xr.decode_cf(ds)
    assert decoded["ndvi"].dtype == np.float32
    np.testing.assert_allclose(
        decoded["ndvi"].values, compute_indices(images)["ndvi"], atol=0.5 / 127 + 1e-6
    )


def test_dataset_records_its_rules_and_units() -> None:
    """The indices carry the rules they were made with (README "Spectral indices"), in the
    README's numbers, so a lake object says how it was computed."""
    images = np.zeros((1, 11, SIDE, SIDE), dtype=np.uint8)
    ds = index_dataset(np.array(["a"]), np.array([0]), images)
    assert ds.attrs["rule_evi_guard"] == "EVI is 0 where its denominator < 0.1"
    assert ds.attrs["rule_evi_clip"] == "EVI clipped to [-1.0, 1.0]"
    assert ds.attrs["rule_quantisation"].startswith("stored as int8 round(value * 127)")
    assert ds.attrs["rule_zero_denominator"] == "NDVI and NDMI are 0 where both bands are 0"
    assert ds.attrs["rule_scaling"] == "bands scaled to [0, 1] by /255 before every formula"
    assert ds["ndvi_mean"].attrs["units"] == "1"
    assert ds["B5_mean"].attrs == {"units": "1", "range": "0..255"}
    assert ds["evi_guarded_fraction"].attrs["long_name"] == (
        "fraction of pixels with EVI denominator < 0.1"
    )


def test_more_images_than_one_chunk_match_image_by_image() -> None:
    """33 images: a full chunk of 32 and a last one of 1, each computed as if alone."""
    images = np.random.default_rng(3).integers(0, 256, (33, 11, SIDE, SIDE), dtype=np.uint8)
    images[-1, B2] = 250  # bright blue: the last image's EVI is guarded everywhere it can be
    together = compute_indices(images)
    fractions = evi_guarded_fraction(images)
    for i in (0, 31, 32):
        alone = compute_indices(images[i : i + 1])
        for name in ("ndvi", "ndmi", "evi"):
            np.testing.assert_array_equal(together[name][i], alone[name][0])
        assert fractions[i] == evi_guarded_fraction(images[i : i + 1])[0]
    assert fractions[32] > 0


def test_quantise_rounds_to_nearest_step() -> None:
    values = np.array([-1.0, -0.5 / 127 - 1e-4, 0.0, 0.4 / 127, 1.0], dtype=np.float32)
    assert quantise(values).tolist() == [-127, -1, 0, 0, 127]


def test_bad_input_is_rejected() -> None:
    images = np.zeros((2, 11, SIDE, SIDE), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        compute_indices(images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):  # right dtype and rank, wrong side
        compute_indices(np.zeros((2, 11, 64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"ids must have shape \(2,\)"):
        index_dataset(np.array(["a"]), np.array([0, 0]), images)
    with pytest.raises(ValueError, match="unicode"):
        index_dataset(np.array([1, 2]), np.array([0, 0]), images)


def test_sample_mean_ndvi(sample: DecodedShard) -> None:
    kept = ~is_blank(sample.images)
    ds = index_dataset(sample.ids[kept], sample.labels[kept], sample.images[kept])
    assert ds.sizes["image"] == 79
    assert float(ds["ndvi_mean"].mean()) == pytest.approx(0.251, abs=0.005)
    # Every real denominator is >= 0.5, so the guard never fires on the sample.
    assert float(ds["evi_guarded_fraction"].max()) == 0.0


def test_band_means_by_hand():
    """Per image, each band's mean over its 4,225 pixels: constant bands give their value; a
    band with one pixel at 255 and the rest 0 gives 255 / 4225 = 0.060355."""
    from droughtwatch_assets.core.indices import band_means_of

    images = np.zeros((2, 11, SIDE, SIDE), np.uint8)
    images[0] = np.arange(11, dtype=np.uint8)[:, None, None] * 20  # band b is 20 * b everywhere
    images[1, B5, 0, 0] = 255
    means = band_means_of(images)
    assert means.shape == (2, 11) and means.dtype == np.float32
    assert means[0].tolist() == [20.0 * b for b in range(11)]
    assert means[1, B5] == pytest.approx(0.060355, abs=1e-6)
    assert means[1].sum() == pytest.approx(0.060355, abs=1e-6)
    assert band_means_of(np.full((1, 11, SIDE, SIDE), 255, np.uint8))[0].tolist() == [255.0] * 11
