"""Spectral indices (NDVI, NDMI, EVI) of Drought Watch stacks, with their guards and int8 storage.

All formulas are on bands scaled to [0, 1] (x / 255); see `compute_indices` for the rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import xarray as xr

from droughtwatch_assets.core.tfrecord import BANDS, IMAGE_SIDE

INDEX_NAMES: tuple[str, ...] = ("ndvi", "ndmi", "evi")
# Every real pixel of the sample has an EVI denominator >= 0.5 (clear and cloudy alike). 0.1 is
# well below that, yet far enough from 0 that no tiny or negative denominator (bright blue, i.e.
# cloud or glare) turns into a huge or sign-flipped EVI; 2.5 / 0.1 = 25 is then clipped anyway.
EVI_MIN_DENOMINATOR = 0.1
EVI_RANGE = (-1.0, 1.0)
# value = int8 * INDEX_SCALE; round(v * 127) for v in [-1, 1] never gives -128.
INDEX_SCALE = 1.0 / 127
QUANTISED_MAX = 127

_PIXELS = IMAGE_SIDE * IMAGE_SIDE
_B2, _B4, _B5, _B6 = (BANDS.index(b) for b in ("B2", "B4", "B5", "B6"))
# Work in chunks of images so the float32 temporaries stay in cache (about 0.5 MB each).
_CHUNK = 32
_F32 = np.float32

_LONG_NAMES = {
    "ndvi": "normalised difference vegetation index (B5 - B4) / (B5 + B4)",
    "ndmi": "normalised difference moisture index (B5 - B6) / (B5 + B6)",
    "evi": "enhanced vegetation index 2.5 (B5 - B4) / (B5 + 6 B4 - 7.5 B2 + 1), guarded",
}
RULES = {
    "scaling": "bands scaled to [0, 1] by /255 before every formula",
    "zero_denominator": "NDVI and NDMI are 0 where both bands are 0",
    "evi_guard": f"EVI is 0 where its denominator < {EVI_MIN_DENOMINATOR}",
    "evi_clip": f"EVI clipped to [{EVI_RANGE[0]}, {EVI_RANGE[1]}]",
    "quantisation": f"stored as int8 round(value * {QUANTISED_MAX}); decode with scale_factor",
    "summary_stats": "per-image mean and std computed from unquantised float32 values",
}


def _check_stack(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    expected = (len(BANDS), IMAGE_SIDE, IMAGE_SIDE)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 with shape (n, {', '.join(map(str, expected))}), "
            f"got {images.dtype} {images.shape}"
        )
    return images


class _Workspace:
    """Float32 buffers reused across chunks: fresh large arrays per chunk cost page faults."""

    def __init__(self, size: int) -> None:
        self.b2, self.b4, self.b5, self.b6, self.t1, self.t2 = (
            np.empty((size, IMAGE_SIDE, IMAGE_SIDE), _F32) for _ in range(6)
        )
        self.guarded = np.empty((size, IMAGE_SIDE, IMAGE_SIDE), bool)


# Added to a + b of two 8-bit bands: where a + b >= 1 the float32 sum does not change (the tiny
# term is far below its resolution), and where a + b == 0 (so a - b == 0 too) the ratio becomes
# 0 / _TINY = 0, the zero-denominator rule. One addition costs a quarter of np.maximum(t, 1).
_TINY = _F32(1e-30)


def _normalised_difference(a: np.ndarray, b: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    # The /255 scale cancels in (a - b) / (a + b), so raw 8-bit values give the same ratio.
    np.subtract(a, b, out=out)
    np.add(a, b, out=tmp)
    tmp += _TINY
    np.divide(out, tmp, out=out)


def _evi(ws: _Workspace, m: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """EVI into `out` (clipped, 0 where guarded); returns the guarded mask."""
    b2, b4, b5 = ws.b2[:m], ws.b4[:m], ws.b5[:m]
    guarded = ws.guarded[:m]
    # Raw 8-bit form: multiply numerator and denominator by 255, so the +1 becomes +255 and the
    # guard compares against 0.1 * 255. Every term is a multiple of 0.5 below 4,096, exact in
    # float32, so the guard is decided exactly (a denominator of exactly 0.1 is not guarded).
    np.multiply(b4, _F32(6), out=tmp)
    tmp += b5
    tmp += _F32(255)
    np.multiply(b2, _F32(7.5), out=out)
    tmp -= out
    np.less(tmp, _F32(EVI_MIN_DENOMINATOR * 255), out=guarded)
    # No division by ~0 or by a negative number: any safe value will do, those pixels are set
    # to 0 below. Guarded pixels are rare (cloud or glare), so masked writes beat np.maximum.
    tmp[guarded] = 1
    np.subtract(b5, b4, out=out)
    out *= _F32(2.5)
    out /= tmp
    out[guarded] = 0
    np.clip(out, _F32(EVI_RANGE[0]), _F32(EVI_RANGE[1]), out=out)
    return guarded


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, _CHUNK):
        yield start, min(start + _CHUNK, n)


def _load_bands(ws: _Workspace, images: np.ndarray, start: int, stop: int) -> int:
    m = stop - start
    for band, buffer in ((_B2, ws.b2), (_B4, ws.b4), (_B5, ws.b5), (_B6, ws.b6)):
        np.copyto(buffer[:m], images[start:stop, band], casting="unsafe")
    return m


def compute_indices(images: np.ndarray) -> dict[str, np.ndarray]:
    """NDVI, NDMI and EVI of a (n, 11, 65, 65) uint8 stack as float32 (n, 65, 65) arrays.

    Rules: NDVI = (B5 - B4) / (B5 + B4) and NDMI = (B5 - B6) / (B5 + B6) are 0 where both bands
    are 0 (no signal) and always lie in [-1, 1]. EVI = 2.5 (B5 - B4) / (B5 + 6 B4 - 7.5 B2 + 1)
    is 0 where its denominator is below EVI_MIN_DENOMINATOR (bright blue, i.e. clouds, drives it
    to zero or below) and is clipped to EVI_RANGE everywhere.
    """
    images = _check_stack(images)
    n = images.shape[0]
    result = {name: np.empty((n, IMAGE_SIDE, IMAGE_SIDE), _F32) for name in INDEX_NAMES}
    ws = _Workspace(min(n, _CHUNK))
    for start, stop in _chunks(n):
        m = _load_bands(ws, images, start, stop)
        tmp = ws.t1[:m]
        _normalised_difference(ws.b5[:m], ws.b4[:m], result["ndvi"][start:stop], tmp)
        _normalised_difference(ws.b5[:m], ws.b6[:m], result["ndmi"][start:stop], tmp)
        _evi(ws, m, result["evi"][start:stop], tmp)
    return result


def evi_guarded_fraction(images: np.ndarray) -> np.ndarray:
    """(n,) float32: the fraction of each image's pixels where the EVI guard set EVI to 0."""
    images = _check_stack(images)
    n = images.shape[0]
    fraction = np.empty(n, _F32)
    ws = _Workspace(min(n, _CHUNK))
    for start, stop in _chunks(n):
        m = _load_bands(ws, images, start, stop)
        guarded = _evi(ws, m, ws.t2[:m], ws.t1[:m])
        fraction[start:stop] = _guarded_fraction(guarded, m)
    return fraction


def _guarded_fraction(guarded: np.ndarray, m: int) -> np.ndarray:
    counts = guarded.reshape(m, _PIXELS).view(np.uint8).sum(axis=1, dtype=np.int32)
    return counts / _F32(_PIXELS)


def quantise(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int8 round(values * 127) for values in [-1, 1]; decode as int8 * INDEX_SCALE."""
    scaled = np.multiply(values, _F32(QUANTISED_MAX), dtype=_F32)
    np.rint(scaled, out=scaled)
    if out is None:
        return scaled.astype(np.int8)
    np.copyto(out, scaled, casting="unsafe")
    return out


def _mean_std(values: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and std; centres `values` in place (the caller is done with them)."""
    flat = values.reshape(m, _PIXELS)
    mean = flat.sum(axis=1) / _F32(_PIXELS)
    # Centre before squaring: sum(x^2) - n mean^2 cancels catastrophically in float32 on
    # uniform images (a fully cloudy patch has mean 0.66, std 0.003).
    flat -= mean[:, None]
    squares = np.einsum("ij,ij->i", flat, flat)
    return mean, np.sqrt(squares / _F32(_PIXELS))


def band_means_of(images: np.ndarray) -> np.ndarray:
    """Per-image mean of each band, (n, 11) float32, a chunk at a time (no float copy of the
    whole stack)."""
    images = _check_stack(images)
    out = np.empty((images.shape[0], len(BANDS)), _F32)
    for start, stop in _chunks(images.shape[0]):
        chunk = images[start:stop].reshape(stop - start, len(BANDS), -1)
        out[start:stop] = chunk.sum(axis=2, dtype=np.uint32) / _F32(_PIXELS)
    return out


def index_dataset(ids: np.ndarray, labels: np.ndarray, images: np.ndarray) -> xr.Dataset:
    """Quantised NDVI/NDMI/EVI maps plus per-image float32 summary stats as a Dataset.

    dims (image, y, x). The maps are int8 with CF attrs (`xr.decode_cf` gives floats); the
    `*_mean` / `*_std` stats and `evi_guarded_fraction` come from the unquantised values.
    """
    images = _check_stack(images)
    n = images.shape[0]
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    for name, values in (("ids", ids), ("labels", labels)):
        if values.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match images, got {values.shape}")
    if ids.dtype.kind != "U":
        if ids.size:
            raise ValueError(f"ids must be a unicode array, got dtype {ids.dtype}")
        ids = ids.astype(str)
    maps = {name: np.empty((n, IMAGE_SIDE, IMAGE_SIDE), np.int8) for name in INDEX_NAMES}
    stats = {
        f"{name}_{stat}": np.empty(n, _F32) for name in INDEX_NAMES for stat in ("mean", "std")
    }
    guarded_fraction = np.empty(n, _F32)
    ws = _Workspace(min(n, _CHUNK))
    ndvi_buffer = np.empty_like(ws.t1)
    for start, stop in _chunks(n):
        m = _load_bands(ws, images, start, stop)
        ndvi, ndmi, evi, tmp = ndvi_buffer[:m], ws.t2[:m], ws.b6[:m], ws.t1[:m]
        _normalised_difference(ws.b5[:m], ws.b4[:m], ndvi, tmp)
        _normalised_difference(ws.b5[:m], ws.b6[:m], ndmi, tmp)  # b6 is free after this
        guarded = _evi(ws, m, evi, tmp)
        guarded_fraction[start:stop] = _guarded_fraction(guarded, m)
        for name, values in (("ndvi", ndvi), ("ndmi", ndmi), ("evi", evi)):
            quantise(values, out=maps[name][start:stop])
            mean, std = _mean_std(values, m)
            stats[f"{name}_mean"][start:stop] = mean
            stats[f"{name}_std"][start:stop] = std

    data_vars: dict[str, tuple] = {}
    for name in INDEX_NAMES:
        data_vars[name] = (
            ("image", "y", "x"),
            maps[name],
            {
                "long_name": _LONG_NAMES[name],
                "units": "1",
                "scale_factor": np.float32(INDEX_SCALE),
                "add_offset": np.float32(0.0),
                "valid_min": np.int8(-QUANTISED_MAX),
                "valid_max": np.int8(QUANTISED_MAX),
            },
        )
    for key, values in stats.items():
        data_vars[key] = ("image", values, {"units": "1"})
    data_vars["evi_guarded_fraction"] = (
        "image",
        guarded_fraction,
        {"long_name": f"fraction of pixels with EVI denominator < {EVI_MIN_DENOMINATOR}"},
    )
    # Each band's per-image mean (raw 0..255 values): what drift monitoring compares per input.
    band_means = band_means_of(images)
    for i, band in enumerate(BANDS):
        data_vars[f"{band}_mean"] = ("image", band_means[:, i], {"units": "1", "range": "0..255"})
    return xr.Dataset(
        data_vars,
        coords={"id": ("image", ids), "label": ("image", labels.astype(np.int8))},
        attrs={f"rule_{k}": v for k, v in RULES.items()},
    )
