"""The synthetic shard generator: determinism, schema, class balance, blanks, clouds, signal."""

from __future__ import annotations

import datetime
import uuid

import numpy as np
import pyarrow as pa
import pytest

from droughtwatch_assets.core.synthetic import (
    CLASS_BALANCE,
    generate_ids,
    generate_images,
    iter_benchmark_shards,
    iter_drop_shards,
)
from droughtwatch_assets.core.tfrecord import UNLABELLED, decode_shard

CORPUS_SIZE = 4000


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    return generate_images(CORPUS_SIZE, np.random.default_rng(2024))


# The project's rules, restated here so the generator is checked against the definitions
# rather than against itself.
def blank_mask(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).max(axis=1) <= 1


def cloudy_pixel_fraction(images: np.ndarray) -> np.ndarray:
    thermal = (images[:, 9].astype(np.int16) + images[:, 10]) / 2
    cloudy = (images[:, 1] >= 77) & (thermal <= 190)
    return cloudy.reshape(len(images), -1).mean(axis=1)


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)


def index_features(images: np.ndarray) -> np.ndarray:
    """Per-image mean NDVI and NDMI, (n, 2)."""
    ndvi = normalised_difference(images[:, 4], images[:, 3]).mean(axis=(1, 2))
    ndmi = normalised_difference(images[:, 4], images[:, 5]).mean(axis=(1, 2))
    return np.stack([ndvi, ndmi], axis=1)


def softmax_regression_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit a 4-class logistic regression on the first half, score it on the second."""
    x = (features - features.mean(axis=0)) / features.std(axis=0)
    x = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(4)[labels]
    half = len(x) // 2
    weights = np.zeros((x.shape[1], 4))
    for _ in range(1500):
        logits = x[:half] @ weights
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        weights -= 0.5 * x[:half].T @ (probs - onehot[:half]) / half
    return float(((x[half:] @ weights).argmax(axis=1) == labels[half:]).mean())


def test_images_have_the_real_shape_and_dtype(corpus) -> None:
    images, labels = corpus
    assert images.shape == (CORPUS_SIZE, 11, 65, 65) and images.dtype == np.uint8
    assert labels.shape == (CORPUS_SIZE,) and labels.dtype == np.int8
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_class_balance_matches_train_split(corpus) -> None:
    _, labels = corpus
    observed = np.bincount(labels, minlength=4) / len(labels)
    np.testing.assert_allclose(observed, CLASS_BALANCE, atol=0.025)


def test_blank_fraction_and_blank_values(corpus) -> None:
    images, _ = corpus
    blank = blank_mask(images)
    assert 0.01 <= blank.mean() <= 0.03
    # Nothing is nearly blank: a patch is either no-data fill or real ground.
    assert images[~blank].reshape((~blank).sum(), -1).max(axis=1).min() > 100


def test_cloudy_images_follow_the_cloud_rule(corpus) -> None:
    images, _ = corpus
    fraction = cloudy_pixel_fraction(images)
    cloudy = fraction > 0.05
    assert 0.045 <= cloudy.mean() <= 0.075
    # Clear images stay well away from the rule: not one cloudy pixel.
    assert (fraction[~cloudy] == 0).all()
    assert fraction[cloudy].min() >= 0.08 and fraction[cloudy].max() <= 0.65


def test_cloud_fraction_parameter_controls_clouds() -> None:
    rng = np.random.default_rng(5)
    all_cloudy, _ = generate_images(60, rng, blank_fraction=0.0, cloudy_fraction=1.0)
    none_cloudy, _ = generate_images(300, rng, blank_fraction=0.0, cloudy_fraction=0.0)
    assert (cloudy_pixel_fraction(all_cloudy) > 0.05).all()
    assert (cloudy_pixel_fraction(none_cloudy) == 0).all()
    assert not blank_mask(none_cloudy).any()


def test_cloud_pixels_are_bright_cold_and_hazy(corpus) -> None:
    images, _ = corpus
    cloudy = cloudy_pixel_fraction(images) > 0.05
    clouds = images[cloudy]
    core = (clouds[:, 1] >= 150) & (clouds[:, 9] <= 185)
    assert core.any()
    for band in (0, 1, 2, 3, 7):
        values = clouds[:, band][core]
        assert 140 <= np.median(values) <= 250
    assert np.median(clouds[:, 8][core]) > 1  # cirrus raised under clouds
    assert 135 <= np.median(clouds[:, 9][core]) <= 185


# (band index, plausible median range on clear land); the sample's medians are
# B1 32, B2 29, B3 32, B4 44, B5 72, B6 84, B7 67, B8 36, B9 0, B10 206, B11 203.
CLEAR_MEDIANS = [
    (0, 26, 38), (1, 23, 35), (2, 26, 38), (3, 36, 52), (4, 62, 82), (5, 72, 96),
    (6, 56, 78), (7, 30, 42), (8, 0, 1), (9, 200, 212), (10, 197, 209),
]  # fmt: skip


@pytest.mark.parametrize(("band", "low", "high"), CLEAR_MEDIANS)
def test_clear_land_band_values_are_plausible(corpus, band: int, low: int, high: int) -> None:
    images, _ = corpus
    clear = images[~blank_mask(images) & (cloudy_pixel_fraction(images) == 0)]
    assert low <= np.median(clear[:, band]) <= high


def test_clear_land_thermal_and_cirrus(corpus) -> None:
    images, _ = corpus
    clear = images[~blank_mask(images) & (cloudy_pixel_fraction(images) == 0)]
    b10, b11 = clear[:, 9].astype(np.int16), clear[:, 10].astype(np.int16)
    assert b10.min() >= 190 and b10.max() <= 220
    assert 1 <= np.median(b10 - b11) <= 6  # B11 a few units below B10
    assert np.mean(clear[:, 8] <= 2) > 0.99
    assert np.percentile(clear[:, 1:4], 99) < 100  # visible bands dark away from clouds


def test_spatial_texture_compresses_like_real_bands(corpus) -> None:
    images, _ = corpus
    sample = np.ascontiguousarray(images[:200])
    codec = pa.Codec("zstd", compression_level=1)
    compressed = sum(len(codec.compress(sample[:, b].tobytes())) for b in range(11))
    per_band = compressed / sample.nbytes
    # The real sample gives 0.47 per band; white noise would give ~1.0, flat fields ~0.0.
    assert 0.40 <= per_band <= 0.58
    clear_land = ~blank_mask(images) & (cloudy_pixel_fraction(images) == 0)
    clear = images[clear_land][:300, 4].astype(np.float32)
    dev = clear - clear.mean(axis=(1, 2), keepdims=True)
    above, below = dev[:, 1:], dev[:, :-1]
    lag1 = (above * below).sum() / np.sqrt((above**2).sum() * (below**2).sum())
    assert 0.85 <= lag1 <= 0.97  # smooth like the sample's 0.90, but not featureless


def test_vegetation_signal_is_learnable_but_noisy(corpus) -> None:
    images, labels = corpus
    kept = ~blank_mask(images)
    features = index_features(images[kept])
    mean_ndvi = features[:, 0].mean()
    assert 0.15 <= mean_ndvi <= 0.35
    by_class = [features[labels[kept] == c, 0].mean() for c in range(4)]
    assert by_class == sorted(by_class)
    accuracy = softmax_regression_accuracy(features, labels[kept].astype(np.int64))
    held_out = labels[kept][len(features) // 2 :]
    majority = np.bincount(held_out).max() / len(held_out)
    assert accuracy > 0.62 and accuracy > majority + 0.02
    assert accuracy < 0.95


def test_generate_ids_are_deterministic_uuids() -> None:
    ids = generate_ids(50, np.random.default_rng(1))
    assert ids == generate_ids(50, np.random.default_rng(1))
    assert ids != generate_ids(50, np.random.default_rng(2))
    assert len(set(ids)) == 50
    assert all(len(i) == 36 and str(uuid.UUID(i)) == i for i in ids)


def test_bad_arguments_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n must be"):
        generate_images(-1, rng)
    with pytest.raises(ValueError, match="class_balance"):
        generate_images(3, rng, class_balance=(1.0, 0.0))
    with pytest.raises(ValueError, match="sum to at most 1"):
        generate_images(3, rng, blank_fraction=0.6, cloudy_fraction=0.6)
    with pytest.raises(ValueError, match="records_per_shard"):
        next(iter_benchmark_shards(train_records=1, val_records=1, records_per_shard=0))


def test_benchmark_shards_are_deterministic_and_decode() -> None:
    def corpus(seed: int) -> list:
        return list(
            iter_benchmark_shards(train_records=45, val_records=12, records_per_shard=20, seed=seed)
        )

    first, again, other = corpus(7), corpus(7), corpus(8)
    assert [s.key for s in first] == [
        "train/part-r-00000", "train/part-r-00001", "train/part-r-00002", "val/part-r-00000",
    ]  # fmt: skip
    assert [s.records for s in first] == [20, 20, 5, 12]
    assert [s.data for s in first] == [s.data for s in again]
    assert all(a.data != b.data for a, b in zip(first, other, strict=True))
    ids = []
    for shard in first:
        decoded = decode_shard(shard.data, shard.key)
        assert len(decoded) == shard.records
        assert decoded.images.shape == (shard.records, 11, 65, 65)
        assert set(decoded.labels.tolist()) <= {0, 1, 2, 3}
        ids.extend(decoded.ids.tolist())
    assert len(set(ids)) == len(ids) == 57 and all(len(i) == 36 for i in ids)


def test_shards_do_not_depend_on_each_other() -> None:
    def shards(train_records: int) -> dict[str, bytes]:
        generated = iter_benchmark_shards(
            train_records=train_records, val_records=10, records_per_shard=10
        )
        return {s.key: s.data for s in generated}

    small, large = shards(20), shards(40)
    assert small["train/part-r-00001"] == large["train/part-r-00001"]
    assert small["val/part-r-00000"] == large["val/part-r-00000"]
    assert small["train/part-r-00000"] != small["train/part-r-00001"]


def test_drop_shards_have_dated_keys_and_labels() -> None:
    start = datetime.date(2024, 8, 30)
    drops = list(iter_drop_shards(drops=3, records_per_drop=15, start_date=start, seed=4))
    assert [d.key for d in drops] == [
        "drops/2024-08-30/part-r-00000",
        "drops/2024-08-31/part-r-00000",
        "drops/2024-09-01/part-r-00000",
    ]
    assert [d.records for d in drops] == [15, 15, 15]
    decoded = decode_shard(drops[0].data, drops[0].key)
    assert len(decoded) == 15 and (decoded.labels >= 0).all()
    assert len({d.data for d in drops}) == 3


def test_unlabelled_drops_decode_unlabelled_with_same_images() -> None:
    start = datetime.date(2024, 8, 7)
    labelled = next(iter_drop_shards(drops=1, records_per_drop=10, start_date=start, seed=9))
    unlabelled = next(
        iter_drop_shards(drops=1, records_per_drop=10, start_date=start, seed=9, labelled=False)
    )
    assert unlabelled.key == "drops/2024-08-07/part-r-00000"
    plain = decode_shard(unlabelled.data, unlabelled.key)
    assert (plain.labels == UNLABELLED).all()
    reference = decode_shard(labelled.data, labelled.key)
    np.testing.assert_array_equal(plain.images, reference.images)
    assert plain.ids.tolist() == reference.ids.tolist()


def test_shifted_drops_shift_what_they_say():
    from droughtwatch_assets.core.indices import band_means_of
    from droughtwatch_assets.core.synthetic import SHIFTS, generate_images

    def draw(name: str):
        shift = SHIFTS[name]
        return generate_images(
            1500, np.random.default_rng(11), class_balance=shift.class_balance,
            cloudy_fraction=shift.cloudy_fraction, band_offsets=shift.band_offsets,
        )  # fmt: skip

    base_images, base_labels = draw("none")
    _, dry_labels = draw("dry")
    assert np.mean(base_labels == 0) == pytest.approx(0.60, abs=0.04)
    assert np.mean(dry_labels == 0) == pytest.approx(0.85, abs=0.03)
    offset_images, offset_labels = draw("offset")
    assert (offset_labels == base_labels).all()  # the same scenes, read differently
    shifted = band_means_of(offset_images) - band_means_of(base_images)
    kept = base_images.reshape(len(base_images), -1).max(axis=1) > 1  # blank patches stay blank
    assert np.median(shifted[kept, 4]) == pytest.approx(20, abs=1)  # B5
    assert np.abs(np.median(shifted[kept][:, [0, 1, 2, 3, 5]], axis=0)).max() < 0.5
    cloudy_images, _ = draw("cloudy")
    # Clouds are bright in the blue band: far more very bright patches than without the shift.
    def bright(images):
        return np.mean(band_means_of(images)[:, 1] > 60)
    assert bright(cloudy_images) > 3 * bright(base_images)
