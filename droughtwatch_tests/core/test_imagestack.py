"""Image stacks as xarray and their Arrow codec: exact round trips, layout, sizes on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from droughtwatch_assets.core.images import cloud_fraction, filter_images, is_cloudy
from droughtwatch_assets.core.imagestack import (
    dataset_from_arrow,
    dataset_to_arrow,
    image_dataset,
    read_columns,
)
from droughtwatch_assets.core.indices import index_dataset
from droughtwatch_assets.core.tfrecord import BANDS, DecodedShard, read_shard
from droughtwatch_assets.pipeline import lake

SIDE = 65


@pytest.fixture(scope="module")
def sample(sample_shard_path: Path) -> DecodedShard:
    return read_shard(sample_shard_path)


def small_image_dataset(n: int = 3) -> xr.Dataset:
    images = np.random.default_rng(n).integers(0, 256, (n, 11, SIDE, SIDE), dtype=np.uint8)
    return image_dataset(
        images,
        np.arange(n) % 4,
        np.array([f"id-{i}" for i in range(n)]),
        cloud_fraction=np.linspace(0, 1, n),
        cloudy=np.arange(n) % 2 == 0,
        attrs={"source": "test"},
    )


def assert_exact(actual: xr.Dataset, expected: xr.Dataset) -> None:
    xr.testing.assert_identical(actual, expected)
    assert list(actual.data_vars) == list(expected.data_vars)
    for name, var in expected.variables.items():
        assert actual[name].dtype == var.dtype, name
        for key, value in var.attrs.items():
            assert type(actual[name].attrs[key]) is type(value), (name, key)
    for key, value in expected.attrs.items():
        assert type(actual.attrs[key]) is type(value), key


def test_image_dataset_layout() -> None:
    ds = small_image_dataset()
    assert dict(ds.sizes) == {"image": 3, "band": 11, "y": SIDE, "x": SIDE}
    assert ds["band"].values.tolist() == list(BANDS)
    assert ds["pixels"].dims == ("image", "band", "y", "x") and ds["pixels"].dtype == np.uint8
    assert (ds["label"].dtype, ds["cloud_fraction"].dtype, ds["cloudy"].dtype) == (
        np.int8,
        np.float32,
        bool,
    )
    assert ds["id"].dims == ("image",)


def test_image_dataset_rejects_mismatched_fields() -> None:
    images = np.zeros((2, 11, SIDE, SIDE), np.uint8)
    with pytest.raises(ValueError, match=r"cloudy must have shape \(2,\)"):
        image_dataset(images, [0, 1], np.array(["a", "b"]), cloud_fraction=[0, 0], cloudy=[True])
    with pytest.raises(ValueError, match="uint8"):
        image_dataset(
            images.astype(np.float32),
            [0, 1],
            np.array(["a", "b"]),
            cloud_fraction=[0, 0],
            cloudy=[True, False],
        )


def test_round_trip_splits_band_columns_and_keeps_attr_types() -> None:
    ds = small_image_dataset()
    ds["pixels"].attrs = {"units": "dn", "scale": np.float32(1 / 255), "range": (0, 255)}
    ds.attrs["shape"] = np.arange(6, dtype=np.int16).reshape(2, 3)
    data = dataset_to_arrow(ds)
    names = ipc.open_file(pa.py_buffer(data)).schema.names
    assert [n for n in names if n.startswith("pixels/")] == [f"pixels/{b}" for b in BANDS]
    assert {"id", "label", "cloud_fraction", "cloudy"} <= set(names)
    back = dataset_from_arrow(memoryview(data))
    assert_exact(back, ds)
    back["pixels"].values[0, 0, 0, 0] += 1  # decoded arrays are ordinary writable arrays


def test_empty_dataset_round_trips() -> None:
    ds = small_image_dataset(0)
    back = dataset_from_arrow(dataset_to_arrow(ds))
    assert_exact(back, ds)
    assert back["pixels"].shape == (0, 11, SIDE, SIDE) and back["id"].dtype.kind == "U"


dtypes_1d = st.sampled_from(["u1", "i1", "i2", "<i4", ">i4", "i8", "u2", "f4", "<f8", "?"])
dtypes_nd = st.sampled_from(["u1", "i1", "<u2", ">f4", "f8", "?"])
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)


@st.composite
def datasets(draw: st.DrawFn) -> xr.Dataset:
    n = draw(st.integers(0, 4))
    width = draw(st.integers(1, 3))
    variables = {}
    for k in range(draw(st.integers(0, 3))):
        dtype = np.dtype(draw(dtypes_1d))
        variables[f"v{k}"] = ("image", draw(hnp.arrays(dtype, n)), {"k": k})
    for k in range(draw(st.integers(0, 2))):
        dtype = np.dtype(draw(dtypes_nd))
        dims = draw(st.sampled_from([("image", "band"), ("image", "band", "y"), ("image", "y")]))
        shape = tuple({"image": n, "band": width, "y": 2}[d] for d in dims)
        variables[f"m{k}"] = (dims, draw(hnp.arrays(dtype, shape)))
    coords = {
        "id": ("image", np.array(draw(st.lists(text, min_size=n, max_size=n)), dtype=str)),
        "band": ("band", np.array([f"b{i}" for i in range(width)]), {"long_name": "band"}),
    }
    attrs = draw(
        st.dictionaries(
            st.text(max_size=5),
            st.one_of(
                st.integers(-(2**40), 2**40),
                st.floats(allow_nan=False),
                text,
                st.lists(st.integers(0, 9), max_size=3),
            ),
            max_size=3,
        )
    )
    return xr.Dataset(variables, coords=coords, attrs=attrs)


@settings(max_examples=30, deadline=None)
@given(ds=datasets())
def test_round_trip_is_exact(ds: xr.Dataset) -> None:
    assert_exact(dataset_from_arrow(dataset_to_arrow(ds)), ds)


def test_read_columns_decodes_only_the_named_variables() -> None:
    ds = small_image_dataset(5)
    data = dataset_to_arrow(ds)
    part = read_columns(data, ["cloud_fraction", "label"])
    assert set(part.variables) == {"cloud_fraction", "label", "band"}
    np.testing.assert_array_equal(part["cloud_fraction"], ds["cloud_fraction"])
    assert part["label"].dtype == np.int8 and "label" in part.coords
    assert part.attrs == ds.attrs
    with pytest.raises(KeyError, match="no variable 'nope'"):
        read_columns(data, ["nope"])
    with pytest.raises(ValueError, match="only 1-D"):
        read_columns(data, ["pixels"])


def test_codec_rejects_what_it_cannot_store() -> None:
    no_image = xr.Dataset({"a": ("x", np.arange(3))})
    with pytest.raises(ValueError, match="'image' as its first dimension"):
        dataset_to_arrow(no_image)
    with pytest.raises(TypeError, match="dtype object"):
        dataset_to_arrow(xr.Dataset({"a": ("image", np.array([{}, 1], dtype=object))}))
    with pytest.raises(TypeError, match="attribute dataset.when"):
        dataset_to_arrow(xr.Dataset(attrs={"when": object()}))
    table = ipc.open_file(pa.py_buffer(dataset_to_arrow(small_image_dataset(1)))).read_all()
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.replace_schema_metadata(None))
    with pytest.raises(ValueError, match="no dataset metadata"):
        dataset_from_arrow(sink.getvalue().to_pybytes())
    with pytest.raises(ValueError, match="not an Arrow IPC file"):
        dataset_from_arrow(b"PAR1 these bytes are not an Arrow file")


def test_sample_storage_is_compact(sample: DecodedShard, sample_shard_path: Path) -> None:
    raw_size = sample_shard_path.stat().st_size
    everything = image_dataset(
        sample.images,
        sample.labels,
        sample.ids,
        cloud_fraction=cloud_fraction(sample.images),
        cloudy=is_cloudy(sample.images),
    )
    stored = dataset_to_arrow(everything)
    assert len(stored) < 0.85 * raw_size  # about 0.79 with lz4 at LZ4_ACCELERATION
    assert_exact(dataset_from_arrow(stored), everything)

    kept, _ = filter_images(sample.images, sample.labels, sample.ids)
    indices = index_dataset(kept["id"].values, kept["label"].values, kept["pixels"].values)
    # As the lake stores them: the filtered images with lz4, the indices without (their int8
    # maps hardly compress: lz4 saves them about 1 %).
    _, stored_kept = lake.prepare(lake.FILTERED_IMAGES, "k", kept)
    _, stored_indices = lake.prepare(lake.SPECTRAL_INDICES, "k", indices)
    assert bytes(stored_kept) == bytes(dataset_to_arrow(kept))
    assert bytes(stored_indices) == bytes(dataset_to_arrow(indices, compression=None))
    assert len(dataset_to_arrow(indices)) > 0.97 * len(stored_indices)
    assert len(stored_kept) + len(stored_indices) < 1.1 * raw_size  # about 1.06
    back = dataset_from_arrow(stored_indices)
    assert_exact(back, indices)
    np.testing.assert_array_equal(
        read_columns(stored_indices, ["ndvi_mean"])["ndvi_mean"], indices["ndvi_mean"]
    )


def test_projection_decodes_only_the_selected_variables_and_bands() -> None:
    ds = small_image_dataset(3)
    data = dataset_to_arrow(ds)
    some = dataset_from_arrow(data, variables=["pixels"], select={"band": ["B5", "B2"]})
    assert list(some.data_vars) == ["pixels"]
    assert list(some["band"].values) == ["B5", "B2"]
    np.testing.assert_array_equal(some["pixels"].values, ds["pixels"].sel(band=["B5", "B2"]).values)
    np.testing.assert_array_equal(some["id"].values, ds["id"].values)  # image coords come along
    none = dataset_from_arrow(data, variables=["pixels"], select={"band": []})
    assert none["pixels"].shape == (3, 0, 65, 65)
    with pytest.raises(KeyError, match="no band"):
        dataset_from_arrow(data, select={"band": ["B12"]})
    with pytest.raises(KeyError, match="no variable"):
        dataset_from_arrow(data, variables=["nope"])
