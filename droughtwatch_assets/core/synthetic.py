"""Synthetic Drought Watch shards in exactly the real schema, for tests, demos and benchmarks.

Pure numpy and deterministic: the same seed gives byte-identical shards.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from droughtwatch_assets.core.tfrecord import IMAGE_SIDE, encode_shard

# The real train split's class balance (51,814 / 12,851 / 13,609 / 8,043).
CLASS_BALANCE: tuple[float, float, float, float] = (0.600, 0.149, 0.158, 0.093)

SPLIT_NUMBERS = {"train": 0, "val": 1}
# Drops get their own stream so a drop never repeats a benchmark shard.
_DROP_STREAM = 2
_BAND_COUNT = 11

# Per-image vegetation signal: NDVI mean rises with the label, with enough per-image noise that
# the classes overlap heavily (a good model lands around 0.7-0.8 accuracy, not near 1.0).
_NDVI_BASE = 0.19
_NDVI_PER_CLASS = 0.06
_NDVI_NOISE = 0.05
_NDMI_BASE = -0.10
_NDMI_PER_CLASS = 0.04
_NDMI_NOISE = 0.045


@dataclass
class SyntheticShard:
    """One generated shard: its key in the data-root layout, its bytes, its record count."""

    key: str
    data: bytes
    records: int


@cache
def _interpolation_matrix(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-kernel upsampling (grid -> IMAGE_SIDE) and the per-pixel std it produces.

    U @ N @ U.T of white noise N is a smooth field; dividing by outer(norm, norm) makes every
    pixel unit variance regardless of where it sits relative to the coarse grid.
    """
    centres = np.linspace(-0.5, IMAGE_SIDE - 0.5, grid)
    spacing = centres[1] - centres[0]
    pixels = np.arange(IMAGE_SIDE, dtype=np.float64)
    weights = np.exp(-0.5 * ((pixels[:, None] - centres[None, :]) / (0.75 * spacing)) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    norm = np.sqrt((weights**2).sum(axis=1))
    return weights.astype(np.float32), np.outer(norm, norm).astype(np.float32)


# (coarse grid size, weight): the mix approximates the sample's autocorrelation, which falls
# from about 0.9 at one pixel to 0.4 at eight and 0.2 at sixteen.
_TEXTURE_OCTAVES = ((3, 0.4), (6, 0.5), (12, 0.5), (24, 0.4))
_CLOUD_OCTAVES = ((3, 0.8), (6, 0.5), (12, 0.25))


def smooth_fields(
    n: int, rng: np.random.Generator, octaves: Sequence[tuple[int, float]] = _TEXTURE_OCTAVES
) -> np.ndarray:
    """`n` independent smooth random fields, (n, 65, 65) float32, zero mean and unit variance."""
    total = np.zeros((n, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    for grid, weight in octaves:
        up, scale = _interpolation_matrix(grid)
        coarse = rng.standard_normal((n, grid, grid), dtype=np.float32)
        total += (weight / scale) * (up @ coarse @ up.T)
    total /= np.float32(np.sqrt(sum(w * w for _, w in octaves)))
    return total


def _per_image(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32)[:, None, None]


# Pixel-level sensor noise per band (std in 8-bit units), matching how much of each band's
# variance in the sample does not carry over to the neighbouring pixel. Applied as uniform
# noise before rounding, which also dithers the quantisation of the smooth fields.
_PIXEL_NOISE = np.array([0.5, 0.5, 0.8, 1.5, 1.8, 2.6, 2.5, 1.0, 0.0, 0.3, 0.3], np.float32)
_NOISE_WIDTH = np.maximum(1.0, np.sqrt(12.0) * _PIXEL_NOISE).astype(np.float32)[:, None, None]
# Images are composed in chunks: temporaries stay small enough to be reused instead of paged
# in afresh, which is several times faster than whole-batch arrays.
_CHUNK = 64


@dataclass
class _SceneParameters:
    """Per-image draws for a batch (1-D arrays of length n)."""

    ndvi: np.ndarray
    ndmi: np.ndarray
    brightness: np.ndarray
    swir_ratio: np.ndarray
    temperature: np.ndarray
    thermal_gap: np.ndarray
    cirrus: np.ndarray

    def __getitem__(self, rows: slice) -> _SceneParameters:
        return _SceneParameters(**{k: v[rows] for k, v in vars(self).items()})


@dataclass(frozen=True)
class Shift:
    """How new drops differ from the training data, with the truth known (they stay labelled):

    - ``class_balance``: a prior shift, P(label) moves while each class's images stay alike;
    - ``cloudy_fraction``: cloudier scenes;
    - ``band_offsets``: a sensor offset, digital numbers added to some bands (clipped 0..255).
    """

    name: str = "none"
    class_balance: tuple[float, ...] = tuple(CLASS_BALANCE)
    cloudy_fraction: float = 0.06
    band_offsets: tuple[tuple[str, int], ...] = ()


SHIFTS = {
    "none": Shift(),
    # A drier season: most patches feed no cow.
    "dry": Shift("dry", class_balance=(0.85, 0.09, 0.04, 0.02)),
    "cloudy": Shift("cloudy", cloudy_fraction=0.35),
    # A recalibrated near-infrared detector reading 20 counts high.
    "offset": Shift("offset", band_offsets=(("B5", 20),)),
}


def generate_images(
    n: int,
    rng: np.random.Generator,
    *,
    class_balance: Sequence[float] = CLASS_BALANCE,
    blank_fraction: float = 0.02,
    cloudy_fraction: float = 0.06,
    band_offsets: Sequence[tuple[str, int]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` labelled 11-band patches: images (n, 11, 65, 65) uint8 and labels (n,) int8.

    Higher labels get more vegetation (higher NDVI and NDMI) with strong class overlap. About
    `blank_fraction` of the images are blank (every band 0 or 1) and about `cloudy_fraction`
    carry a bright, cold cloud blob over 10-60 % of the patch.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    balance = np.asarray(class_balance, dtype=np.float64)
    if balance.shape != (4,) or (balance < 0).any() or balance.sum() <= 0:
        raise ValueError(f"class_balance must be 4 non-negative weights, got {class_balance!r}")
    if min(blank_fraction, cloudy_fraction) < 0 or blank_fraction + cloudy_fraction > 1:
        raise ValueError(
            f"blank_fraction ({blank_fraction}) and cloudy_fraction ({cloudy_fraction}) must be "
            "non-negative and sum to at most 1"
        )
    labels = rng.choice(4, size=n, p=balance / balance.sum()).astype(np.int8)
    kind = rng.random(n)
    blank = kind < blank_fraction
    cloudy = (kind >= blank_fraction) & (kind < blank_fraction + cloudy_fraction)

    # Vegetation and moisture carry the label; everything else is scene-to-scene variation.
    ndvi_noise = rng.normal(0.0, _NDVI_NOISE, n)
    ndvi = np.clip(_NDVI_BASE + _NDVI_PER_CLASS * labels + ndvi_noise, 0.02, 0.65)
    ndmi_noise = 0.4 * ndvi_noise + rng.normal(0.0, _NDMI_NOISE, n)
    scene = _SceneParameters(
        ndvi=ndvi,
        ndmi=_NDMI_BASE + _NDMI_PER_CLASS * labels + ndmi_noise,
        brightness=np.exp(rng.normal(0.0, 0.11, n)),
        swir_ratio=rng.normal(0.80, 0.05, n),
        temperature=np.clip(rng.normal(206.0, 3.5, n) - 12.0 * (ndvi - 0.25), 197.0, 214.0),
        thermal_gap=rng.normal(3.2, 0.6, n),
        cirrus=np.clip(rng.exponential(0.35, n) - 0.15, 0.0, 2.0),
    )

    images = np.empty((n, _BAND_COUNT, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        bands = _clear_land(scene[rows], rng)
        if cloudy[rows].any():
            _add_clouds(bands, np.flatnonzero(cloudy[rows]), rng)
        bands += (rng.random(bands.shape, dtype=np.float32) - np.float32(0.5)) * _NOISE_WIDTH
        for band, offset in band_offsets:
            bands[:, int(band[1:]) - 1] += np.float32(offset)
        np.rint(bands, out=bands)
        np.clip(bands, 0, 255, out=bands)
        images[rows] = bands
    if blank.any():
        # Blank patches are all zero with the odd stray 1 (the real data's no-data fill).
        idx = np.flatnonzero(blank)
        images[idx] = (rng.random((idx.size, *images.shape[1:])) < 0.01).astype(np.uint8)
    return images, labels


def _ratio_factor(ndvi: np.ndarray) -> np.ndarray:
    """(1 - NDVI) / (1 + NDVI): red over NIR for a given NDVI."""
    return (1.0 - ndvi) / (1.0 + ndvi)


def _clear_land(scene: _SceneParameters, rng: np.random.Generator) -> np.ndarray:
    """Float band values (n, 11, 65, 65) of cloud-free ground for the given scene draws."""
    n = scene.ndvi.size
    soil = smooth_fields(n, rng)  # brightness of bare ground
    green = smooth_fields(n, rng)  # vegetation cover, partly opposite to bright soil

    beta = _per_image(scene.brightness) * np.exp(np.float32(0.13) * soil)
    ndvi = _per_image(scene.ndvi) + np.float32(0.045) * (0.8 * green - 0.6 * soil)
    ndvi = np.clip(ndvi, -0.2, 0.85)
    ndmi = _per_image(scene.ndmi) + np.float32(0.04) * (0.7 * green - 0.5 * soil)
    ndmi = np.clip(ndmi, -0.6, 0.6)

    bands = np.empty((n, _BAND_COUNT, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    # Vegetation darkens the red band and brightens NIR; splitting the NDVI change 80/20
    # between them keeps NIR's spread across scenes close to the sample's.
    ratio = _ratio_factor(ndvi) / np.float32(_ratio_factor(0.25))
    red = 44.0 * beta * ratio**0.8
    nir = 73.0 * beta * ratio ** (-0.2)
    swir1 = nir * _ratio_factor(ndmi)
    bands[:, 0] = 32.0 * beta**0.3
    bands[:, 1] = np.minimum(29.0 * beta**0.35, 70.0)  # clear land never reaches cloud blue
    bands[:, 2] = 32.0 * beta**0.55 * ratio**0.2
    bands[:, 3] = red
    bands[:, 4] = nir
    bands[:, 5] = swir1
    bands[:, 6] = swir1 * _per_image(scene.swir_ratio)
    bands[:, 7] = 0.35 * (bands[:, 1] + bands[:, 2] + bands[:, 3])
    bands[:, 8] = _per_image(scene.cirrus) - 0.3 + 0.35 * green
    bands[:, 9] = _per_image(scene.temperature) + 1.3 * (0.6 * soil - 0.5 * green)
    bands[:, 10] = bands[:, 9] - _per_image(scene.thermal_gap)
    # Clear land stays warm: the cloud rule must never fire on it.
    np.maximum(bands[:, 9:11], 193.0, out=bands[:, 9:11])
    return bands


def _add_clouds(bands: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> None:
    """Blend a bright, cold blob covering 10-60 % of each selected patch into `bands`."""
    count = idx.size
    field = smooth_fields(count, rng, _CLOUD_OCTAVES)
    cover = rng.uniform(0.12, 0.60, count)
    ordered = np.sort(field.reshape(count, -1), axis=1)
    rank = ((1.0 - cover) * (ordered.shape[1] - 1)).astype(np.intp)
    threshold = ordered[np.arange(count), rank]
    thickness = field - threshold[:, None, None].astype(np.float32)
    # A narrow ramp gives soft edges while keeping the opaque core near the drawn cover.
    alpha = np.clip(thickness / 0.25 + 0.5, 0.0, 1.0)
    texture = np.clip(thickness, 0.0, 1.5)

    visible = _per_image(rng.uniform(160.0, 235.0, count)) + 10.0 * texture
    cold = _per_image(rng.uniform(145.0, 180.0, count)) - 4.0 * texture
    swir = _per_image(rng.uniform(0.25, 0.75, count)) * visible
    haze = _per_image(rng.uniform(2.0, 25.0, count))
    cloud = {
        0: visible,
        1: visible,
        2: visible * 0.97,
        3: visible,
        4: visible + 10.0,
        5: swir,
        6: swir * 0.85,
        7: visible * 0.97,
        8: haze * np.minimum(1.0, 0.5 + texture),
        9: cold,
        10: cold - 1.0,
    }
    for band, value in cloud.items():
        land = bands[idx, band]
        bands[idx, band] = land + alpha * (value - land)


def generate_ids(n: int, rng: np.random.Generator) -> list[str]:
    """`n` 36-character UUID4 strings drawn from `rng` (deterministic, unlike uuid.uuid4)."""
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i : 16 * (i + 1)], version=4)) for i in range(n)]


def generate_shard(
    records: int, rng: np.random.Generator, *, labelled: bool = True, shift: Shift = SHIFTS["none"]
) -> bytes:
    """One shard of `records` generated examples (drawn as `shift` says), as TFRecord bytes."""
    images, labels = generate_images(
        records,
        rng,
        class_balance=shift.class_balance,
        cloudy_fraction=shift.cloudy_fraction,
        band_offsets=shift.band_offsets,
    )
    ids = generate_ids(records, rng)
    shard_labels: Sequence[int | None] | np.ndarray = labels if labelled else [None] * records
    return encode_shard(images, shard_labels, ids)


def iter_benchmark_shards(
    *, train_records: int, val_records: int, records_per_shard: int = 500, seed: int = 0
) -> Iterator[SyntheticShard]:
    """Yield a benchmark-shaped corpus: `train/part-r-00000`, ..., then `val/part-r-00000`, ...

    Each shard has its own generator seeded from (seed, split, index), so any shard can be
    regenerated alone and shards do not depend on each other or on `records_per_shard` order.
    """
    if records_per_shard <= 0:
        raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
    for split, total in (("train", train_records), ("val", val_records)):
        if total < 0:
            raise ValueError(f"{split}_records must be >= 0, got {total}")
        for index, start in enumerate(range(0, total, records_per_shard)):
            records = min(records_per_shard, total - start)
            rng = np.random.default_rng([seed, SPLIT_NUMBERS[split], index])
            data = generate_shard(records, rng)
            yield SyntheticShard(f"{split}/part-r-{index:05d}", data, records)


def iter_drop_shards(
    *,
    drops: int,
    records_per_drop: int,
    start_date: datetime.date,
    seed: int = 0,
    labelled: bool = True,
    shift: Shift = SHIFTS["none"],
) -> Iterator[SyntheticShard]:
    """Yield one new-data shard per consecutive day: `drops/<YYYY-MM-DD>/part-r-00000`, drawn
    as `shift` says (unshifted by default).

    Unlabelled drops carry no `label` feature (as field data would arrive); the images are the
    same as the labelled drop with the same seed.
    """
    if drops < 0 or records_per_drop <= 0:
        raise ValueError(
            f"drops must be >= 0 and records_per_drop positive, got {drops}, {records_per_drop}"
        )
    for index in range(drops):
        day = start_date + datetime.timedelta(days=index)
        rng = np.random.default_rng([seed, _DROP_STREAM, index])
        data = generate_shard(records_per_drop, rng, labelled=labelled, shift=shift)
        yield SyntheticShard(f"drops/{day.isoformat()}/part-r-00000", data, records_per_drop)
